"""autolog() / LIGHTNING_MLFLOW_AUTOLOG=1, and what a run records with the pair or with autolog: Trainer settings,
optimizers, schedulers, learning rate per step, EarlyStopping (both class families), model summary, system
metrics. Real Trainers and real stores; checked through MlflowClient."""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import pytorch_lightning
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowCallback, MLflowLogger, autolog
from lightning_mlflow_ext.trainer.autolog import MLflowAutologCallback


@pytest.fixture(autouse=True)
def _autolog_off() -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    global_uri = tracking_utils._tracking_uri
    yield
    # MLflow's own autolog sets its global tracking URI while it runs; later tests must not inherit it.
    tracking_utils._tracking_uri = global_uri
    import lightning_mlflow_ext.trainer.autolog as autologging

    autologging._options = None  # back to "the environment decides", as in a fresh process
    autologging._enabled = False


def runs_of(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def assert_each_point_once(client: MlflowClient, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        twice = [s for s, n in collections.Counter(steps).items() if n > 1]
        assert not twice, f"{key}: steps {twice} stored twice"


class ScheduledModel(TinyModel):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            [{"params": self.net[0].parameters()}, {"params": self.net[1].parameters(), "lr": 0.01}],
            lr=0.05,
            weight_decay=0.1,
            betas=(0.8, 0.99),
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_an_unchanged_script_is_recorded_with_the_environment_variable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(tmp_path.parent)!r})
            sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
            from lightning.pytorch.callbacks import EarlyStopping
            from tiny import TinyData, TinyModel, make_trainer

            trainer = make_trainer(False, max_epochs=4, callbacks=[EarlyStopping("val_loss", patience=0,
                                                                                 min_delta=100.0)])
            trainer.fit(TinyModel(lr=0.07), TinyData(batch_size=16))
            trainer.test(TinyModel(), TinyData())
            """
        )
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {
        **__import__("os").environ,
        "LIGHTNING_MLFLOW_AUTOLOG": "1",
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": "unchanged",
    }
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(uri)
    (run,) = runs_of(client, "unchanged")
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert params["lr"] == "0.07"  # save_hyperparameters() of the module
    assert params["batch_size"] == "16"  # ... and of the datamodule
    assert params["optimizer/0/name"] == "SGD"
    assert params["optimizer/0/group/0/lr"] == "0.07"
    assert params["trainer/max_epochs"] == "4"
    assert params["trainer/precision"] == "32-true"
    assert params["trainer/accumulate_grad_batches"] == "1"
    assert params["early_stopping/monitor"] == "val_loss"
    assert params["early_stopping/patience"] == "0"
    assert params["early_stopping/min_delta"] == "100.0"
    assert params["model/total_params"] == params["model/trainable_params"] == "41"
    # EarlyStopping stopped the fit after epoch 1 (no improvement of 100): recorded as its outcome.
    assert metrics["early_stopping/stopped"] == 1.0
    assert metrics["early_stopping/stopped_epoch"] == 1.0
    assert "early_stopping/best_score" in metrics
    assert metrics["best/val_loss"] == min(m.value for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert metrics["fit/epochs"] == 2.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr-SGD")] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert "test_loss" in metrics
    summary = client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))
    assert "Linear" in Path(summary).read_text()
    assert_each_point_once(client, run.info.run_id)
    # Nothing was written into the run after it ended.
    latest = max(m.timestamp for key in metrics for m in client.get_metric_history(run.info.run_id, key))
    assert latest <= run.info.end_time


def test_optimizer_groups_schedulers_and_the_learning_rate_per_step(tracking_uri, client, experiment_name):
    autolog(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(False, max_epochs=1)
    trainer.fit(ScheduledModel(), TinyData())
    (run,) = runs_of(client, experiment_name)
    params = run.data.params
    assert params["optimizer/0/name"] == "AdamW"
    assert params["optimizer/0/group/0/lr"] == "0.05"
    assert params["optimizer/0/group/1/lr"] == "0.01"
    assert params["optimizer/0/group/0/weight_decay"] == "0.1"
    assert params["optimizer/0/group/0/betas"] == "(0.8, 0.99)"
    assert params["lr_scheduler/0/name"] == "StepLR"
    assert params["lr_scheduler/0/interval"] == "step"
    assert params["lr_scheduler/0/step_size"] == "4"
    assert params["lr_scheduler/0/gamma"] == "0.5"
    history = client.get_metric_history(run.info.run_id, "lr-AdamW/pg1")
    assert [(m.step, m.value) for m in history][:5] == [(0, 0.05), (1, 0.05), (2, 0.05), (3, 0.05), (4, 0.025)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr-AdamW/pg2")][4] == 0.005


def test_autolog_records_into_the_active_run_and_can_be_turned_off(tracking_uri, client, experiment_name):
    autolog(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(experiment_name)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as outer:
            make_trainer(False, max_epochs=1).fit(TinyModel(), TinyData())
            assert client.get_run(outer.info.run_id).info.status == "RUNNING"  # the user's run stays theirs
    finally:
        mlflow.set_tracking_uri(None)
    (run,) = runs_of(client, experiment_name)
    assert run.info.run_id == outer.info.run_id
    assert "val_loss" in run.data.metrics and run.data.params["lr"] == "0.1"

    autolog(disable=True)
    trainer = make_trainer(False, max_epochs=1)
    assert not [cb for cb in trainer.callbacks if isinstance(cb, MLflowCallback)]
    trainer.fit(TinyModel(), TinyData())
    assert len(runs_of(client, experiment_name)) == 1  # nothing new


def test_a_trainer_with_its_own_logger_or_callback_gets_nothing_twice(tracking_uri, client, experiment_name):
    autolog(tracking_uri=tracking_uri, experiment_name="never-used")
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1)
    trainer.fit(TinyModel(), TinyData())
    assert trainer.loggers == [logger]  # no second logger
    (run,) = runs_of(client, experiment_name)
    assert "optimizer/0/name" in run.data.params  # autolog's callback recorded into the user's logger's run
    assert_each_point_once(client, run.info.run_id)

    own = MLflowCallback(log_learning_rate=True)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1, callbacks=[own])
    trainer.fit(TinyModel(), TinyData())
    assert len([cb for cb in trainer.callbacks if isinstance(cb, MLflowAutologCallback)]) == 1  # there, but inert
    assert len(runs_of(client, experiment_name)) == 2
    assert_each_point_once(client, logger.run_id)  # lr-SGD once per step, not once per callback
    assert client.get_experiment_by_name("never-used") is None


def test_with_mlflow_pytorch_autolog_also_on_each_point_is_stored_once(tmp_path, experiment_name, monkeypatch, caplog):
    # MLflow's autolog works through the fluent API's global settings: one store for the whole test process.
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment_name)
    client.create_experiment(experiment_name)
    mlflow.pytorch.autolog(log_models=False, log_every_n_step=1)
    try:
        autolog()
        with caplog.at_level(logging.WARNING, logger="lightning_mlflow_ext"):
            make_trainer(False, max_epochs=2).fit(TinyModel(), TinyData())
    finally:
        mlflow.pytorch.autolog(disable=True)
    (run,) = runs_of(client, experiment_name)  # MLflow autolog opened it; this package logged into it
    assert run.info.status == "FINISHED"
    assert_each_point_once(client, run.info.run_id)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "train_loss_step")) == 16
    warnings = [r.getMessage() for r in caplog.records if "mlflow.pytorch.autolog() is on" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("early_stopping", [EarlyStopping, pytorch_lightning.callbacks.EarlyStopping])
def test_early_stopping_of_either_lightning_package_is_recorded(early_stopping, tracking_uri, client,
                                                                experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    stopper = early_stopping(monitor="val_loss", mode="min", patience=1, min_delta=100.0)
    trainer = make_trainer(logger, max_epochs=6, callbacks=[MLflowCallback(), stopper])
    trainer.fit(TinyModel(), TinyData())
    run = client.get_run(logger.run_id)
    assert run.data.params["early_stopping/patience"] == "1"
    assert run.data.params["early_stopping/mode"] == "min"
    assert run.data.metrics["early_stopping/stopped"] == 1.0
    assert run.data.metrics["early_stopping/stopped_epoch"] == float(stopper.stopped_epoch) > 0
    assert run.data.metrics["early_stopping/best_score"] == pytest.approx(float(stopper.best_score))
    losses = [m.value for m in client.get_metric_history(logger.run_id, "val_loss")]
    assert run.data.metrics["best/val_loss"] == min(losses)  # min_delta does not apply to the best value


class Slow(Callback):
    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.1)


def test_system_metrics_are_attached_to_the_run(tracking_uri, client, experiment_name, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=2, callbacks=[MLflowCallback(log_system_metrics=True), Slow()])
    trainer.fit(TinyModel(), TinyData())
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system
    assert "system/system_memory_usage_megabytes" in system
    assert len(client.get_metric_history(logger.run_id, "system/cpu_utilization_percentage")) >= 2


def test_system_metrics_are_off_by_default(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    make_trainer(logger, max_epochs=1, callbacks=[MLflowCallback()]).fit(TinyModel(), TinyData())
    assert not [key for key in client.get_run(logger.run_id).data.metrics if key.startswith("system/")]


def test_unknown_autolog_options_are_refused_with_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown options \['experiment'\].*experiment_name"):
        autolog(experiment="typo")
