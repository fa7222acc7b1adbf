"""Getting checkpoints back out of a run, as a user does after training: which one "best" is, what a run
that is not in the store says, and where downloads go."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import LightningMLflowError, MLflowLogger, RunNotFoundError, load_checkpoint, load_model


def sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fit(tracking_uri: str, experiment_name: str, callbacks: list[ModelCheckpoint], max_epochs: int = 2) -> str:
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    trainer = make_trainer(logger, max_epochs=max_epochs, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(TinyModel(lr=0.05), TinyData())
    return str(logger.run_id)


def test_best_is_the_monitored_callbacks_best_beside_a_periodic_one(tracking_uri, experiment_name, tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val_loss", mode="max", save_top_k=1)
    periodic = ModelCheckpoint(dirpath=tmp_path / "periodic")  # keeps the latest epoch, monitors nothing
    run_id = fit(tracking_uri, experiment_name, [best, periodic], max_epochs=3)
    assert os.path.basename(best.best_model_path) != os.path.basename(periodic.best_model_path)  # not the last

    path = load_checkpoint(run_id, "best", tracking_uri=tracking_uri, dst_path=tmp_path / "dl")
    assert sha256(path) == sha256(best.best_model_path)
    latest = load_checkpoint(run_id, "best", callback="latest", tracking_uri=tracking_uri, dst_path=tmp_path / "dl2")
    assert sha256(latest) == sha256(periodic.best_model_path)


def test_best_of_several_monitored_callbacks_asks_which(tracking_uri, experiment_name, tmp_path):
    by_val = ModelCheckpoint(dirpath=tmp_path / "val", monitor="val_loss", save_top_k=1)
    by_train = ModelCheckpoint(dirpath=tmp_path / "train", monitor="train_loss_epoch", save_top_k=1)
    periodic = ModelCheckpoint(dirpath=tmp_path / "periodic")
    run_id = fit(tracking_uri, experiment_name, [by_val, by_train, periodic])

    with pytest.raises(LightningMLflowError) as error:
        load_checkpoint(run_id, "best", tracking_uri=tracking_uri, dst_path=tmp_path / "dl")
    message = str(error.value)
    assert "several monitored callbacks" in message and "pass callback=" in message
    assert "'train_loss_epoch'" in message and "'val_loss'" in message and "'latest'" not in message
    path = load_checkpoint(run_id, "best", callback="train_loss_epoch", tracking_uri=tracking_uri, dst_path=tmp_path)
    assert sha256(path) == sha256(by_train.best_model_path)


def test_a_run_not_in_the_store_says_which_store_was_searched(
    tracking_uri, client, experiment_name, tmp_path, monkeypatch
):
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")  # the run is not there

    with pytest.raises(RunNotFoundError) as error:
        load_checkpoint(run_id)
    message = str(error.value)
    assert run_id in message and f"{tmp_path}/other.db" in message
    assert "from MLFLOW_TRACKING_URI" in message and "tracking_uri=" in message

    if tracking_uri.startswith("http"):  # a URL with credentials: named without them
        with_credentials = tracking_uri.replace("http://", "http://alice:s3cr3t-t0ken@")
        with pytest.raises(RunNotFoundError) as error:
            load_model(TinyModel, "0" * 32, tracking_uri=with_credentials)
        message = str(error.value)
        assert tracking_uri in message and "given as tracking_uri=" in message
        assert "s3cr3t" not in message and "alice" not in message


def test_without_dst_path_the_checkpoint_goes_to_the_cache_and_no_temporary_folder_stays(
    tracking_uri, experiment_name, tmp_path, monkeypatch
):
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    run_id = fit(tracking_uri, experiment_name, [best])
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # every temporary folder of this process goes here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LIGHTNING_MLFLOW_CACHE_DIR", raising=False)

    name = os.path.basename(best.best_model_path)
    path = load_checkpoint(run_id, tracking_uri=tracking_uri)
    if os.name == "posix" and os.uname().sysname == "Linux":
        expected = tmp_path / "xdg" / "lightning-mlflow-ext" / "runs" / run_id / "checkpoints" / "val_loss" / name
        assert Path(path) == expected
    assert sha256(path) == sha256(best.best_model_path)
    again = load_model(TinyModel, run_id, tracking_uri=tracking_uri)  # the same place, downloaded again
    assert again.hparams.lr == 0.05
    assert sorted(os.listdir(Path(path).parents[2])) == ["checkpoints"]  # no download folder left in the cache
    assert os.listdir(temp) == []

    monkeypatch.setenv("LIGHTNING_MLFLOW_CACHE_DIR", str(tmp_path / "scratch"))
    moved = load_checkpoint(run_id, tracking_uri=tracking_uri)
    assert Path(moved) == tmp_path / "scratch" / "runs" / run_id / "checkpoints" / "val_loss" / name
    assert os.listdir(temp) == []
