"""Moving from ``mlflow.pytorch.autolog()``: the same Lightning fits, once under MLflow's autolog and once under
``lightning_mlflow_ext.autolog()``, into the same store; what MLflow's records must be in ours, under the same
names, at the same places, with the same values. The differences that remain are asserted as such (each is
listed in the README's migration section with its reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning
import mlflow
import pytest
import pytorch_lightning
from mlflow import MlflowClient
from mlflow.entities import Run
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import autolog
from lightning_mlflow_ext.run.models import mlflow_pytorch

#: Tags that differ between any two runs (a random name) or are this package's own.
VOLATILE_TAGS = {"mlflow.runName"}
#: TinyModel's keys Lightning logs at every step (log_every_n_steps=1); MLflow's autolog records their last value
#: of each epoch at step = epoch instead (a documented difference).
STEP_KEYS = {"train_loss_step", "train_mse"}


@pytest.fixture(autouse=True)
def _fluent_state_back() -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    global_uri = tracking_utils._tracking_uri
    yield
    tracking_utils._tracking_uri = global_uri
    import lightning_mlflow_ext.trainer.autolog as autologging

    autologging._options = None
    autologging._enabled = False
    mlflow.tracking.fluent._reset_last_logged_model_id()


@pytest.fixture
def store(tracking_uri: str, experiment_name: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """One store and experiment for both autologs (MLflow's reads the fluent API's global settings)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment_name)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    client.create_experiment(experiment_name)
    return client


def fit(which: str, make: Callable[[], tuple[lightning.Trainer, TinyModel]], **options: Any) -> tuple[Run, Any]:
    """One fit under ``which`` autolog, turned off again after it; the run and model MLflow's fluent API
    reports afterwards."""
    mlflow.tracking.fluent._reset_last_logged_model_id()
    pytorch = mlflow_pytorch()
    if which == "mlflow":
        pytorch.autolog(**options)
    else:
        autolog(**options)
    try:
        trainer, model = make()
        trainer.fit(model, TinyData())
    finally:
        if which == "mlflow":
            pytorch.autolog(disable=True)
        else:
            autolog(disable=True)
    run = mlflow.last_active_run()
    assert run is not None, f"{which}: mlflow.last_active_run() is None after the fit"
    return run, mlflow.last_logged_model()


def history(client: MlflowClient, run: Run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def assert_superset(client: MlflowClient, theirs: Run, ours: Run) -> dict[str, list[tuple[int, float]]]:
    """MLflow's params, tags, metric keys and steps, and artifacts are all in ours, with the same values; the
    metrics are returned for the caller to assert the per-step keys, which MLflow records at other steps."""
    theirs, ours = client.get_run(theirs.info.run_id), client.get_run(ours.info.run_id)
    missing = {k: v for k, v in theirs.data.params.items() if ours.data.params.get(k) != v}
    assert not missing, f"params MLflow records that ours lacks or holds otherwise: {missing}"
    tags = {k: v for k, v in theirs.data.tags.items() if k not in VOLATILE_TAGS and ours.data.tags.get(k) != v}
    assert not tags, f"tags MLflow records that ours lacks or holds otherwise: {tags} (ours: {ours.data.tags})"
    their_metrics, our_metrics = history(client, theirs), history(client, ours)
    assert set(their_metrics) <= set(our_metrics), set(their_metrics) - set(our_metrics)
    for key, points in their_metrics.items():
        if key in STEP_KEYS:
            continue  # recorded at other steps: the caller asserts how
        ours_at = dict(our_metrics[key])
        assert {step for step, _ in points} <= set(ours_at), (key, points, our_metrics[key])
        assert [ours_at[s] for s, _ in points] == pytest.approx([v for _, v in points]), key
    their_files = artifacts(client, theirs.info.run_id)
    assert their_files <= artifacts(client, ours.info.run_id), their_files - artifacts(client, ours.info.run_id)
    return our_metrics


def early_stopped(max_epochs: int = 4) -> tuple[lightning.Trainer, TinyModel]:
    lightning.seed_everything(0)
    # pytorch_lightning's EarlyStopping: MLflow's autolog finds only that class (ours finds either).
    stopper = pytorch_lightning.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)
    return make_trainer(False, max_epochs=max_epochs, enable_checkpointing=True, callbacks=[stopper]), TinyModel()


def plain(max_epochs: int = 4) -> Callable[[], tuple[lightning.Trainer, TinyModel]]:
    def make() -> tuple[lightning.Trainer, TinyModel]:
        lightning.seed_everything(0)
        return make_trainer(False, max_epochs=max_epochs), TinyModel()

    return make


def test_defaults_record_what_mlflow_autolog_records(store, tmp_path):
    theirs, their_model = fit("mlflow", early_stopped)
    ours, our_model = fit("ours", early_stopped)
    assert ours.info.run_id != theirs.info.run_id
    metrics = assert_superset(store, theirs, ours)
    # With MLflow's defaults, the epoch-level keys hold exactly MLflow's points.
    their_metrics = history(store, store.get_run(theirs.info.run_id))
    assert {k: [s for s, _ in v] for k, v in their_metrics.items() if k not in STEP_KEYS} == {
        k: [s for s, _ in metrics[k]] for k in their_metrics if k not in STEP_KEYS
    }

    params = store.get_run(ours.info.run_id).data.params
    assert params["lr"] == "0.1" and params["optimizer_name"] == "SGD" and params["epochs"] == "4"
    assert params["patience"] == "1" and params["monitor"] == "val_loss" and params["stopped_epoch"] == "0"
    assert params["min_delta"] == "-100.0"  # as EarlyStopping holds it for mode="min", as MLflow records it
    assert params["early_stopping/min_delta"] == "100.0" and params["optimizer/0/group/0/lr"] == "0.1"  # ours too
    tags = store.get_run(ours.info.run_id).data.tags
    assert tags["mlflow.autologging"] == "pytorch" and tags["Mode"] == "training"
    # Early stopping's outcome under MLflow's names (MLflow's own autolog loses it when the fit has no
    # ModelCheckpoint; this one has Lightning's default).
    assert metrics["stopped_epoch"] == [(0, 1.0)] and metrics["restored_epoch"] == [(0, 0.0)]
    # The plain name of a metric logged on_step and on_epoch: its epoch value, at step = epoch.
    assert metrics["train_loss"] == pytest.approx(metrics["train_loss_epoch"])
    # The remaining difference: per-step keys hold every logged step here, the epoch's last value at step = epoch
    # in MLflow's (a per-step key holding points on two axes).
    assert [s for s, _ in metrics["train_loss_step"]] == list(range(16))
    ours_at = dict(metrics["train_loss_step"])
    assert dict(their_metrics["train_loss_step"]) == pytest.approx({0: ours_at[7], 1: ours_at[15]})

    # The trained model, as MLflow's fluent API reports it, with the same signature.
    assert their_model is not None and our_model is not None
    assert our_model.name == their_model.name == "model"
    assert our_model.source_run_id == ours.info.run_id
    for run, model in ((theirs, their_model), (ours, our_model)):  # the model among the run's outputs
        outputs = store.get_run(run.info.run_id).outputs.model_outputs
        assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, 0)]
    their_info = mlflow.models.get_model_info(f"models:/{their_model.model_id}")
    our_info = mlflow.models.get_model_info(f"models:/{our_model.model_id}")
    assert our_info.signature is not None and our_info.signature == their_info.signature
    loaded = mlflow_pytorch().load_model(f"models:/{our_model.model_id}")
    assert isinstance(loaded, TinyModel)

    # MLflow's checkpoint, where mlflow.pytorch.load_checkpoint finds it.
    assert tags["mlflow.latest_checkpoint_artifact"] == "checkpoints/latest_checkpoint.pth"
    restored = mlflow_pytorch().load_checkpoint(TinyModel, ours.info.run_id)
    assert isinstance(restored, TinyModel)
    saved = "checkpoints/latest_checkpoint_metrics.json"
    their_json = Path(store.download_artifacts(theirs.info.run_id, saved, str(tmp_path / "a"))).read_text()
    our_json = Path(store.download_artifacts(ours.info.run_id, saved, str(tmp_path / "b"))).read_text()
    assert json.loads(our_json) == pytest.approx(json.loads(their_json))


def test_mlflow_autolog_options_have_their_meaning(store):
    options: dict[str, Any] = {
        "log_every_n_epoch": 2,
        "log_every_n_step": 3,
        "log_models": False,
        "extra_tags": {"team": "vision"},
        "checkpoint_monitor": "val_loss",
        "checkpoint_mode": "max",
        "checkpoint_save_best_only": False,
        "checkpoint_save_weights_only": True,
        "checkpoint_save_freq": 5,
    }
    theirs, their_model = fit("mlflow", plain(), **options)
    ours, our_model = fit("ours", plain(), **options)
    metrics = assert_superset(store, theirs, ours)
    # Per-step values: MLflow's autolog records each at the global step after its optimizer step, Lightning's
    # loggers (and so this package) at the step it was computed at: the same values, one step earlier here.
    their_metrics = history(store, store.get_run(theirs.info.run_id))
    for key in STEP_KEYS:
        ours_at = dict(metrics[key])
        assert [ours_at[step - 1] for step, _ in their_metrics[key]] == pytest.approx(
            [value for _, value in their_metrics[key]]
        ), key
    assert their_model is None and our_model is None  # log_models=False
    assert store.get_run(ours.info.run_id).data.tags["team"] == "vision"
    assert [s for s, _ in metrics["train_loss"]] == [1, 3]  # every second epoch
    files = artifacts(store, ours.info.run_id, "checkpoints")
    assert {f for f in files if "global_step_" in f} == {
        f"checkpoints/global_step_{step}/{name}"
        for step in (5, 10, 15, 20, 25, 30)
        for name in ("checkpoint.weights.pth", "checkpoint_metrics.json")
    }


def test_inside_an_active_run_both_record_into_it(store, experiment_name):
    runs = []
    for which in ("mlflow", "ours"):
        with mlflow.start_run() as active:
            run, model = fit(which, plain(2), checkpoint=False, registered_model_name=experiment_name)
            assert run.info.run_id == active.info.run_id
        runs.append(active.info.run_id)
        assert mlflow.last_active_run().info.run_id == active.info.run_id
        assert model is not None and model.source_run_id == active.info.run_id
        tags = store.get_run(active.info.run_id).data.tags
        assert "mlflow.autologging" not in tags  # autolog did not create this run
        assert {"val_loss", "train_loss"} <= set(store.get_run(active.info.run_id).data.metrics)
    experiment = store.get_experiment_by_name(experiment_name)
    assert len(store.search_runs([experiment.experiment_id])) == 2
    # registered_model_name: each fit's trained model, a new version (MLflow's meaning).
    versions = store.search_model_versions(f"name = '{experiment_name}'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [(1, runs[0]), (2, runs[1])]


def test_the_mlflow_names_can_be_switched_off(store):
    ours, model = fit("ours", plain(1), mlflow_compat=False)
    run = store.get_run(ours.info.run_id)
    assert "optimizer/0/group/0/lr" in run.data.params and "optimizer_name" not in run.data.params
    assert "mlflow.autologging" not in run.data.tags and model is None
    with pytest.raises(TypeError, match="mlflow_compat=False"):
        autolog(mlflow_compat=False, checkpoint_save_freq=3)


def test_bad_mlflow_options_are_refused_when_autolog_is_called():
    with pytest.raises(ValueError, match="checkpoint_save_freq"):
        autolog(checkpoint_save_freq="sometimes")
    with pytest.raises(ValueError, match="checkpoint_monitor"):
        autolog(checkpoint_monitor=None)
    with pytest.raises(ValueError, match="exclusive=True"):
        autolog(exclusive=True)
    autolog(log_datasets=True, silent=True, disable_for_unsupported_versions=False)  # accepted, as MLflow's


SPAWN_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import mlflow, lightning
    from tiny import TinyData, TinyModel, make_trainer
    import lightning_mlflow_ext

    if __name__ == "__main__":
        lightning_mlflow_ext.autolog()
        with mlflow.start_run() as run:
            trainer = make_trainer(False, strategy="ddp_spawn", devices=2, max_epochs=2)
            trainer.fit(TinyModel(), TinyData())
        print("RUN", run.info.run_id)
    """
)


def test_ddp_spawn_inside_an_active_run_records_into_it(store, experiment_name, tracking_uri, tmp_path):
    script = tmp_path / "spawn_fit.py"
    script.write_text(SPAWN_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment_name}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split("RUN ", 1)[1].split()[0]
    experiment = store.get_experiment_by_name(experiment_name)
    (run,) = store.search_runs([experiment.experiment_id])  # no second run
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    assert {"val_loss", "train_loss_epoch", "train_loss"} <= set(run.data.metrics)
    assert run.data.params["trainer/devices"] == "2" and run.data.params["optimizer_name"] == "SGD"
    assert sorted(m.step for m in store.get_metric_history(run_id, "val_loss")) == [0, 1]
    # MLflow's defaults, from the spawned rank 0: its checkpoint and the trained model, in the user's run.
    assert "checkpoints/latest_checkpoint.pth" in artifacts(store, run_id, "checkpoints")
    models = store.search_logged_models([experiment.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", run_id)]
