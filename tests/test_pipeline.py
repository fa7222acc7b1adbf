"""Separate processes, one run: examples/pipeline (preprocess -> DDP train -> predict) through its one shell line,
and a pipeline whose middle step fails."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.run.tags import HEARTBEAT_TAG, RELEASED

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline"


def test_the_example_pipeline_lands_in_one_finished_run(mlflow_server, tmp_path):
    folder = tmp_path / "pipeline"
    shutil.copytree(EXAMPLE, folder)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "pipeline"}
    done = subprocess.run(["bash", str(folder / "run.sh")], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "preprocess-train-predict"
    assert run.data.params["preprocess/seed"] == "0"  # step 1
    assert run.data.params["lr"] == "0.05"  # step 2
    assert "predict_mse" in run.data.metrics  # step 3
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoints", "predictions.json"}
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"raw_train", "train", "val"}
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert not [s for s, n in collections.Counter(steps).items() if n > 1], key
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1, 2]


def test_a_failed_pipeline_step_ends_the_run_failed(tracking_uri, client, experiment_name, monkeypatch):
    with MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, end_run=False) as first:
        first.log_hyperparams({"step": "preprocess"})
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING"  # left open for the next step
    assert run.data.tags[HEARTBEAT_TAG] == RELEASED  # on purpose, not by a dead process

    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    middle = MLflowLogger(tracking_uri=tracking_uri)
    make_trainer(middle, max_epochs=1).fit(TinyModel(), TinyData())
    assert middle.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"  # not the last step

    failing = MLflowLogger(tracking_uri=tracking_uri)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(failing, max_epochs=1).fit(TinyModel(fail_at_step=2), TinyData())
    assert client.get_run(first.run_id).info.status == "FAILED"  # nobody else would end it
