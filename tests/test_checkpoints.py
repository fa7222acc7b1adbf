"""Checkpoints of every ModelCheckpoint, as a user finds them in the run's artifacts and tags."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.entities import LoggedModelStatus
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.trainer.checkpoint_files import epoch_and_step

TAG = "lightning_mlflow_ext.checkpoint."


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def listing(client, run_id: str, path: str) -> list[str]:
    return sorted(os.path.basename(f.path) for f in client.list_artifacts(run_id, path))


def metadata(client, run_id: str, artifact_path: str, tmp_path) -> dict:
    local = client.download_artifacts(run_id, artifact_path + ".json", str(tmp_path / "meta"))
    with open(local) as handle:
        return json.load(handle)


def two_callbacks(folder):
    best = ModelCheckpoint(dirpath=folder / "best", monitor="val_loss", mode="min", save_top_k=1)
    every = ModelCheckpoint(dirpath=folder / "every", every_n_epochs=2, save_top_k=-1)
    return best, every


def test_every_callback_is_mirrored_with_metadata_tags_and_pruning(tracking_uri, client, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model="all")
    best, every = two_callbacks(tmp_path / "ckpt")
    trainer = make_trainer(logger, max_epochs=4, enable_checkpointing=True, callbacks=[best, every])
    trainer.fit(TinyModel(lr=0.05), TinyData())
    run_id = logger.run_id

    assert listing(client, run_id, "checkpoints") == ["every-2-epochs", "val_loss"]
    best_file = os.path.basename(best.best_model_path)
    # save_top_k=1: the files Lightning deleted are gone from the run too.
    assert listing(client, run_id, "checkpoints/val_loss") == [best_file, best_file + ".json"]
    every_files = sorted(os.listdir(tmp_path / "ckpt" / "every"))
    assert len(every_files) == 2
    assert listing(client, run_id, "checkpoints/every-2-epochs") == sorted(
        every_files + [f + ".json" for f in every_files]
    )

    meta = metadata(client, run_id, f"checkpoints/val_loss/{best_file}", tmp_path)
    assert meta["sha256"] == sha256(best.best_model_path)
    assert meta["size"] == os.path.getsize(best.best_model_path)
    assert meta["monitor"] == "val_loss" and meta["mode"] == "min"
    assert meta["score"] == pytest.approx(float(best.best_model_score))
    assert meta["stale"] is False

    tags = client.get_run(run_id).data.tags
    assert tags[TAG + "val_loss.best"] == f"checkpoints/val_loss/{best_file}"
    assert float(tags[TAG + "val_loss.best_score"]) == pytest.approx(float(best.best_model_score))
    assert tags[TAG + "every-2-epochs.latest"] == f"checkpoints/every-2-epochs/{every_files[-1]}"
    assert "lightning_mlflow_ext.checkpoints_partial" not in tags

    uploaded = client.download_artifacts(run_id, f"checkpoints/val_loss/{best_file}", str(tmp_path / "dl"))
    assert sha256(uploaded) == sha256(best.best_model_path)


def test_log_model_true_uploads_at_the_end_and_a_failed_fit_says_partial(
    tracking_uri, client, experiment_name, tmp_path
):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(logger, max_epochs=3, enable_checkpointing=True, callbacks=[callback])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModel(fail_at_step=12), TinyData())  # dies in epoch 1, after epoch 0 was saved
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["lightning_mlflow_ext.checkpoints_partial"] == "true"
    files = listing(client, logger.run_id, "checkpoints/latest")
    assert "last.ckpt" in files and "epoch=0-step=8.ckpt" in files


def test_no_upload_without_log_model(tracking_uri, client, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    make_trainer(logger, max_epochs=1, enable_checkpointing=True).fit(TinyModel(), TinyData())
    assert client.list_artifacts(logger.run_id, "checkpoints") == []


def test_best_model_is_logged_in_the_runs_experiment_and_registered_as_best(
    tracking_uri, client, experiment_name, tmp_path, monkeypatch
):
    # The process-wide MLflow default is another store: the logger's own store must still be the one used.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    name = f"tiny-{experiment_name[-12:]}"
    logger = MLflowLogger(
        experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True, registered_model_name=name
    )
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer = make_trainer(logger, max_epochs=2, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(TinyModel(lr=0.03), TinyData())

    run = client.get_run(logger.run_id)
    model_id = run.data.tags["lightning_mlflow_ext.best_model_id"]
    model = client.get_logged_model(model_id)
    assert model.experiment_id == run.info.experiment_id  # not experiment 0, where log_model's globals put it
    assert model.source_run_id == logger.run_id
    assert model.status == LoggedModelStatus.READY
    assert (
        model.tags["lightning_mlflow_ext.checkpoint"]
        == f"checkpoints/val_loss/{os.path.basename(callback.best_model_path)}"
    )
    assert "val_loss" in {metric.key for metric in model.metrics} and "val_loss" not in model.params
    version = client.get_model_version_by_alias(name, "best")
    assert version.run_id == logger.run_id
    assert run.data.tags["lightning_mlflow_ext.registered_model"] == f"{name}@best"


def mirrored_checkpoints(client, run_id: str, folder: str) -> list[str]:
    return [name for name in listing(client, run_id, folder) if name.endswith(".ckpt")]


def assert_metadata_is_each_files_own(client, run_id: str, folder: str, local_dir, tmp_path) -> list[tuple]:
    """Every mirrored checkpoint's .ckpt.json says the epoch and step stored in that very checkpoint."""
    seen = []
    for name in mirrored_checkpoints(client, run_id, folder):
        meta = metadata(client, run_id, f"{folder}/{name}", tmp_path / name)
        saved = torch.load(local_dir / name, map_location="cpu", weights_only=False)
        assert (name, meta["epoch"], meta["global_step"]) == (name, saved["epoch"], saved["global_step"])
        seen.append((meta["epoch"], meta["global_step"]))
    return seen


def test_log_model_true_records_each_checkpoints_own_epoch_and_step(tracking_uri, client, experiment_name, tmp_path):
    # Uploaded at the end of the fit, each file must still say when it was saved (not the trainer's last step).
    folder = tmp_path / "ckpt"
    logger = MLflowLogger(
        experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True, log_best_model=True
    )
    # mode="max": the loss falls, so the "best" checkpoint is the first one, not the one the fit ended on.
    callback = ModelCheckpoint(dirpath=folder, monitor="val_loss", mode="max", save_top_k=3, save_last=True)
    make_trainer(logger, max_epochs=3, enable_checkpointing=True, callbacks=[callback]).fit(
        TinyModel(lr=0.05), TinyData()
    )
    assert mirrored_checkpoints(client, logger.run_id, "checkpoints/val_loss") == [
        "epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "epoch=2-step=24.ckpt", "last.ckpt"
    ]  # fmt: skip
    seen = assert_metadata_is_each_files_own(client, logger.run_id, "checkpoints/val_loss", folder, tmp_path / "a")
    assert sorted(seen) == [(0, 8), (1, 16), (2, 24), (2, 24)]
    assert os.path.basename(callback.best_model_path) == "epoch=0-step=8.ckpt"
    model = client.get_logged_model(client.get_run(logger.run_id).data.tags["lightning_mlflow_ext.best_model_id"])
    assert model.tags["lightning_mlflow_ext.step"] == "8"  # the step of its checkpoint

    # Resumed in a new process: the files saved before it are read for their epoch and step.
    resumed = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    callback = ModelCheckpoint(dirpath=folder, monitor="val_loss", mode="max", save_top_k=3, save_last=True)
    make_trainer(resumed, max_epochs=4, enable_checkpointing=True, callbacks=[callback]).fit(
        TinyModel(lr=0.05), TinyData(), ckpt_path=str(folder / "last.ckpt")
    )
    assert resumed.run_id == logger.run_id
    seen = assert_metadata_is_each_files_own(client, logger.run_id, "checkpoints/val_loss", folder, tmp_path / "b")
    assert len(seen) == 4 and sorted(seen)[:3] == [(0, 8), (1, 16), (2, 24)] and sorted(seen)[3][1] == 32


def test_a_checkpoints_epoch_and_step_are_read_without_running_its_code(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("still here")
    checkpoint = {
        "epoch": 7,
        "global_step": 700,
        "state_dict": {"w": torch.zeros(3)},
        "hyper_parameters": {"payload": RemovesAFile(str(marker))},
    }
    torch.save(checkpoint, tmp_path / "x.ckpt")
    assert epoch_and_step(tmp_path / "x.ckpt") == (7, 700)
    assert marker.exists()  # unpickling it for real would have removed it
    (tmp_path / "not.ckpt").write_text("not a checkpoint")
    assert epoch_and_step(tmp_path / "not.ckpt") == (None, None)


class RemovesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.remove, (self.path,))
