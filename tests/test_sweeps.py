"""Sweeps: a child run per trial under one parent run per sweep (parent_run_id, Optuna studies, Hydra multiruns)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import lightning
import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.optuna import record_best_trial
from lightning_mlflow_ext.run.sweeps import Sweep, find_or_create_parent
from lightning_mlflow_ext.run.tags import (
    OWNER_TAG,
    SWEEP_BEST_PARAM_PREFIX,
    SWEEP_BEST_RUN_TAG,
    SWEEP_ID_TAG,
    SWEEP_KIND_TAG,
    SWEEP_NAME_TAG,
    SWEEP_OVERRIDES_TAG,
    SWEEP_TRIAL_STATE_TAG,
    SWEEP_TRIAL_TAG,
)

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


# ---- Optuna ------------------------------------------------------------------------------------------


class PruneTrialOne(optuna.pruners.BasePruner):
    """A pruner that decides as a real one would, but predictably: trial 1 is pruned at its first report."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


class ReportToTrial(lightning.Callback):
    """What optuna-integration's PyTorchLightningPruningCallback does: report, and raise TrialPruned if told."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.trial.report(float(trainer.callback_metrics["val_loss"]), trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {trainer.current_epoch}")


def test_optuna_study_is_a_parent_run_with_a_child_per_trial_and_the_best_trial(store, experiment_name):
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 0.01, 0.2)
        hidden = trial.suggest_categorical("hidden", [2, 4])
        trainer = make_trainer(
            MLflowLogger(experiment_name=experiment_name, trial=trial), callbacks=[ReportToTrial(trial)], **QUICK
        )
        trainer.fit(TinyModel(lr=lr, hidden=hidden), TinyData())
        return float(trainer.callback_metrics["val_loss"])

    study = optuna.create_study(
        study_name="lr-search", sampler=optuna.samplers.RandomSampler(seed=0), pruner=PruneTrialOne()
    )
    study.optimize(objective, n_trials=3, callbacks=[record_best_trial])

    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    (parent,) = [r for r in client.search_runs([experiment_id]) if PARENT not in r.data.tags]  # any MLflow 3
    assert parent.info.run_name == "lr-search"
    assert parent.info.status == "FINISHED"
    trials = children_of(client, parent.info.run_id)
    assert [run.info.run_name for run in trials] == ["trial-0", "trial-1", "trial-2"]
    for run, trial in zip(trials, study.trials, strict=True):
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert run.data.params["hidden"] == str(trial.params["hidden"])
        assert run.data.tags[SWEEP_TRIAL_TAG] == str(trial.number)
        assert run.data.tags[SWEEP_NAME_TAG] == "lr-search"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    states = [(run.info.status, run.data.tags[SWEEP_TRIAL_STATE_TAG]) for run in trials]
    assert states == [("FINISHED", "COMPLETE"), ("FINISHED", "PRUNED"), ("FINISHED", "COMPLETE")]
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]

    best = study.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.metrics["best_trial"] == best.number
    assert parent.data.tags[SWEEP_BEST_RUN_TAG] == trials[best.number].info.run_id
    assert parent.data.tags[SWEEP_BEST_PARAM_PREFIX + "lr"] == str(best.params["lr"])
    # One point per trial that ended: the study's progress.
    assert [p.step for p in client.get_metric_history(parent.info.run_id, "best_value")] == [0, 1, 2]


def test_optuna_study_inside_the_users_run_uses_it_as_the_parent(store, experiment_name):
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        with MLflowLogger(trial=trial) as logger:  # no Trainer: the run's status follows the block
            logger.log_metrics({"y": x * x}, step=0)
        return x * x

    client = MlflowClient(store)
    with mlflow.start_run(run_name="my-tuning") as outer:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        study.optimize(objective, n_trials=2, callbacks=[record_best_trial])
        assert client.get_run(outer.info.run_id).info.status == "RUNNING"

    trials = children_of(client, outer.info.run_id)
    assert [run.info.run_name for run in trials] == ["trial-0", "trial-1"]
    assert all(run.info.status == "FINISHED" for run in trials)
    run = client.get_run(outer.info.run_id)
    assert run.info.run_name == "my-tuning"
    assert run.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert SWEEP_ID_TAG not in run.data.tags  # no parent of the package's was created
    assert len(client.search_runs([run.info.experiment_id])) == 3


# ---- Hydra -------------------------------------------------------------------------------------------


def test_hydra_multirun_is_a_parent_run_with_a_child_per_job(store, experiment_name, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "hydra_sweep.py")
    tests_and_package = [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]
    done = subprocess.run(
        [sys.executable, script, "-m", "lr=0.1,0.01", "hydra.sweep.dir=sweeps/lr"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, tests_and_package))},
    )
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    (parent,) = [r for r in client.search_runs([experiment_id]) if PARENT not in r.data.tags]  # any MLflow 3
    assert parent.info.run_name == "sweeps/lr"
    assert parent.data.tags[SWEEP_KIND_TAG] == "hydra"
    assert parent.info.status == "FINISHED"
    jobs = sorted(children_of(client, parent.info.run_id), key=lambda run: run.data.tags[SWEEP_TRIAL_TAG])
    assert [run.info.run_name for run in jobs] == ["lr=0.1", "lr=0.01"]
    assert [run.data.tags[SWEEP_OVERRIDES_TAG] for run in jobs] == ["lr=0.1", "lr=0.01"]
    assert [run.data.tags[SWEEP_TRIAL_TAG] for run in jobs] == ["0", "1"]
    assert [run.data.params["lr"] for run in jobs] == ["0.1", "0.01"]
    assert all(run.info.status == "FINISHED" for run in jobs)
    assert all(run.data.tags[SWEEP_TRIAL_STATE_TAG] == "COMPLETE" for run in jobs)


def test_two_jobs_creating_the_sweeps_parent_at_once_agree_on_the_older_one(store, experiment_name):
    client = MlflowClient(store)
    experiment_id = client.create_experiment(experiment_name)
    sweep = Sweep.of("hydra", "multirun/lr")
    other: list[str] = []

    def create_while_another_job_does() -> mlflow.entities.Run:
        # The other job searched too, found nothing, and created its parent a moment before this one.
        other.append(client.create_run(experiment_id, run_name="other", tags=sweep.parent_tags).info.run_id)
        time.sleep(0.01)
        return client.create_run(experiment_id, run_name="mine", tags=sweep.parent_tags)

    parent = find_or_create_parent(client, experiment_id, sweep, create_while_another_job_does)
    assert parent.info.run_id == other[0]
    again = find_or_create_parent(client, experiment_id, sweep, lambda: pytest.fail("found, not created"))
    assert again.info.run_id == parent.info.run_id
    (left,) = client.search_runs([experiment_id])  # the loser deleted its own
    assert left.info.run_id == other[0]
