"""Sweeps: a child run per trial under one parent run per sweep (parent_run_id, Optuna studies, Hydra multiruns)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.run.tags import OWNER_TAG

PARENT = "mlflow.parentRunId"
QUICK = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}


@pytest.fixture(scope="module")
def _module_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One SQLite store for the module (creating its tables is most of a small test's time); each test has
    # experiments of its own.
    return f"sqlite:///{tmp_path_factory.mktemp('sweeps')}/mlflow.db"


@pytest.fixture
def store(_module_store: str, experiment_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The embedded SQLite store, as the user's fluent API sees it too (MLFLOW_TRACKING_URI), with this test's
    experiment as the fluent API's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _module_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment_name)
    return _module_store


def children_of(client: MlflowClient, parent_id: str) -> list[mlflow.entities.Run]:
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_id}'")
    return sorted(runs, key=lambda run: run.info.run_name)


def test_parent_run_id_of_the_active_run_makes_a_child_per_trial(store, experiment_name, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")  # the children go where their parent is
    client = MlflowClient(store)
    with mlflow.start_run(run_name="sweep", experiment_id=client.create_experiment(experiment_name)) as parent:
        for i in range(3):
            logger = MLflowLogger(parent_run_id=parent.info.run_id, run_name=f"trial-{i}")
            make_trainer(logger, **QUICK).fit(TinyModel(lr=0.1 / (i + 1)), TinyData())
        assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # the user's run, left to its `with`

    trials = children_of(client, parent.info.run_id)
    assert [run.info.run_name for run in trials] == ["trial-0", "trial-1", "trial-2"]
    assert len({run.info.run_id for run in trials}) == 3
    assert all(run.info.status == "FINISHED" for run in trials)
    assert all(run.info.experiment_id == parent.info.experiment_id for run in trials)  # nested in the UI
    assert [run.data.params["lr"] for run in trials] == ["0.1", "0.05", "0.03333333333333333"]
    outer = client.get_run(parent.info.run_id)
    assert outer.info.run_name == "sweep"
    assert PARENT not in outer.data.tags
    assert OWNER_TAG not in outer.data.tags
    assert not outer.data.metrics and not outer.data.params


def test_parent_run_id_of_mlflow_run_id_makes_a_child_and_leaves_that_run_open(store, experiment_name, monkeypatch):
    client = MlflowClient(store)
    pipeline_run = client.create_run(client.create_experiment(experiment_name), run_name="pipeline")
    monkeypatch.setenv("MLFLOW_RUN_ID", pipeline_run.info.run_id)
    with MLflowLogger(parent_run_id=pipeline_run.info.run_id, run_name="step") as logger:
        logger.log_metrics({"loss": 1.0}, step=0)
    assert logger.run_id != pipeline_run.info.run_id
    child = client.get_run(logger.run_id)
    assert (child.info.run_name, child.info.status) == ("step", "FINISHED")
    assert child.data.tags[PARENT] == pipeline_run.info.run_id
    parent = client.get_run(pipeline_run.info.run_id)
    assert (parent.info.run_name, parent.info.status) == ("pipeline", "RUNNING")
    assert PARENT not in parent.data.tags and not parent.data.metrics


def test_run_id_equal_to_parent_run_id_is_refused(store, experiment_name):
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment(experiment_name))
    logger = MLflowLogger(run_id=run.info.run_id, parent_run_id=run.info.run_id)
    with pytest.raises(Exception, match="cannot be its own parent"):
        _ = logger.run_id
    assert PARENT not in client.get_run(run.info.run_id).data.tags
