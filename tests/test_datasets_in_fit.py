"""A fit records the data it read: one dataset input per split, in checkpoints too; strict lineage refuses."""

from __future__ import annotations

import json

import mlflow
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lineage_repos import git_repo
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowCallback, MLflowLogger
from lightning_mlflow_ext.lineage.errors import LineageError


def test_fit_logs_one_input_per_split_and_checkpoints_carry_the_digests(
    tracking_uri, client, experiment_name, tmp_path
):
    repo = git_repo(tmp_path / "project", {"data/train.csv": "a,b\n1,2\n", "data/val.csv": "a,b\n3,4\n"})
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    callback = MLflowCallback(datasets={"train": repo / "data/train.csv", "val": repo / "data/val.csv"})
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    make_trainer(logger, max_epochs=1, enable_checkpointing=True, callbacks=[callback, checkpoint]).fit(
        TinyModel(), TinyData()
    )
    run = client.get_run(logger.run_id)
    inputs = {
        next(tag.value for tag in d.tags if tag.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert sorted(inputs) == ["train", "val"]
    assert inputs["train"].source_type == "git"
    loaded = mlflow.data.get_source(inputs["train"]).load(str(tmp_path / "loaded"))
    with open(loaded) as handle:
        assert handle.read() == "a,b\n1,2\n"

    name = checkpoint.best_model_path.rsplit("/", 1)[1]
    meta_path = client.download_artifacts(logger.run_id, f"checkpoints/latest/{name}.json", str(tmp_path / "m"))
    with open(meta_path) as handle:
        digests = json.load(handle)["dataset_digests"]
    assert digests == {"train": inputs["train"].digest, "val": inputs["val"].digest}


def test_strict_lineage_refuses_dirty_data_before_the_first_step(tracking_uri, client, experiment_name, tmp_path):
    repo = git_repo(tmp_path / "project", {"data/train.csv": "a,b\n1,2\n"})
    (repo / "data/train.csv").write_text("a,b\n9,9\n")  # changed, not committed
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    callback = MLflowCallback(datasets=[repo / "data/train.csv"], lineage="strict")
    with pytest.raises(LineageError, match="lineage='strict'"):
        make_trainer(logger, callbacks=[callback]).fit(TinyModel(), TinyData())
    assert client.get_metric_history(logger.run_id, "train_loss_step") == []
    assert client.get_run(logger.run_id).info.status == "FAILED"


def test_resuming_on_changed_data_is_detected_and_tagged(tracking_uri, client, experiment_name, tmp_path):
    from lineage_repos import commit_all

    repo = git_repo(tmp_path / "project", {"data/train.csv": "a,b\n1,2\n"})
    first = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callbacks = [MLflowCallback(datasets={"train": repo / "data/train.csv"}), checkpoint]
    make_trainer(first, max_epochs=1, enable_checkpointing=True, callbacks=callbacks).fit(TinyModel(), TinyData())
    assert client.get_run(first.run_id).data.tags["lightning_mlflow_ext.lineage"] == "reproducible"

    (repo / "data/train.csv").write_text("a,b\n5,6\n")
    commit_all(repo, "new data")
    second = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    callbacks = [MLflowCallback(datasets={"train": repo / "data/train.csv"}), ModelCheckpoint(dirpath=tmp_path / "c2")]
    trainer = make_trainer(second, max_epochs=2, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(TinyModel(), TinyData(), ckpt_path=checkpoint.last_model_path)
    changed = json.loads(
        client.get_run(second.run_id).data.tags["lightning_mlflow_ext.lineage.changed_since_checkpoint"]
    )
    assert list(changed) == ["train"] and changed["train"][0] != changed["train"][1]


def test_data_outside_any_repository_is_tagged_incomplete_not_a_crash(tracking_uri, client, experiment_name, tmp_path):
    data = tmp_path / "loose.csv"
    data.write_text("a\n1\n")
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    callbacks = [MLflowCallback(datasets={"train": data})]
    make_trainer(logger, max_epochs=1, callbacks=callbacks).fit(TinyModel(), TinyData())
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lightning_mlflow_ext.lineage"] == "incomplete"
    assert "train" in run.data.tags["lightning_mlflow_ext.lineage.problems"]
