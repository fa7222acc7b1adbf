"""log_model_options: what of each checkpoint reaches the run, as a user finds it in the run's artifacts and tags."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import CheckpointUploadPolicy, LightningMLflowError, MLflowLogger, load_checkpoint, load_model

SKIPPED_TAG = "lightning_mlflow_ext.checkpoints_skipped"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # The policy is applied on this side of the store; the upload itself is the same as for every checkpoint.
    # One store for the module (each test has its own run): creating a SQLite store is most of a test's time.
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def listing(client, run_id: str, path: str) -> list[str]:
    return sorted(os.path.basename(f.path) for f in client.list_artifacts(run_id, path))


def read_json(client, run_id: str, artifact_path: str, tmp_path) -> dict:
    with open(client.download_artifacts(run_id, artifact_path, str(tmp_path / "meta"))) as handle:
        return json.load(handle)


def models_of(client, run_id: str) -> list:
    """The run's checkpoints as logged models (the module's runs share one experiment)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return [m for m in client.search_logged_models([experiment_id]) if m.source_run_id == run_id]


def fit(tmp_path, tracking_uri, options, *, save_top_k=1, max_epochs=2):
    logger = MLflowLogger(tracking_uri=tracking_uri, log_model="all", log_model_options=options)
    callback = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min", save_top_k=save_top_k, save_last=True
    )
    trainer = make_trainer(logger, max_epochs=max_epochs, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(TinyModel(lr=0.05, hidden=6), TinyData())
    return logger, callback, trainer


def test_weights_only_uploads_a_loadable_copy_and_exclude_leaves_files_out(tracking_uri, client, tmp_path):
    options = CheckpointUploadPolicy(weights_only=True, exclude=["*last*.ckpt"])
    logger, callback, _ = fit(tmp_path, tracking_uri, options)
    run_id = logger.run_id
    best = os.path.basename(callback.best_model_path)

    assert listing(client, run_id, "checkpoints/val_loss") == [best, best + ".json"]  # no last.ckpt
    uploaded = torch.load(
        load_checkpoint(run_id, tracking_uri=tracking_uri, dst_path=tmp_path / "dl"), weights_only=False
    )
    assert "optimizer_states" not in uploaded and "loops" not in uploaded and "callbacks" not in uploaded
    assert uploaded["hyper_parameters"]["hidden"] == 6 and uploaded["global_step"] > 0
    local = torch.load(callback.best_model_path, weights_only=False)
    assert "optimizer_states" in local  # the user's own checkpoint is as Lightning wrote it
    meta = read_json(client, run_id, f"checkpoints/val_loss/{best}.json", tmp_path)
    assert meta["weights_only"] is True
    assert meta["size"] == os.path.getsize(client.download_artifacts(run_id, f"checkpoints/val_loss/{best}"))
    assert meta["size"] < os.path.getsize(callback.best_model_path)

    # The checkpoint's logged model holds the same weights-only copy, and none is made for the excluded file.
    (checkpoint_model,) = models_of(client, run_id)
    repository = get_artifact_repository(checkpoint_model.artifact_location, tracking_uri=tracking_uri)
    in_model = torch.load(repository.download_artifacts(best, str(tmp_path)), weights_only=False)
    assert "optimizer_states" not in in_model and in_model["global_step"] == uploaded["global_step"]

    model = load_model(TinyModel, run_id, tracking_uri=tracking_uri, dst_path=tmp_path / "dl2")
    assert model.hparams.hidden == 6
    for name, tensor in local["state_dict"].items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_a_checkpoint_over_max_size_is_not_uploaded_and_the_run_says_why(tracking_uri, client, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    logger, callback, _ = fit(tmp_path, tracking_uri, {"max_size": "1kB"})
    run_id = logger.run_id
    best = os.path.basename(callback.best_model_path)
    size = os.path.getsize(callback.best_model_path)

    # Only the metadata files, each saying why its checkpoint is missing.
    assert listing(client, run_id, "checkpoints/val_loss") == sorted([best + ".json", "last.ckpt.json"])
    meta = read_json(client, run_id, f"checkpoints/val_loss/{best}.json", tmp_path)
    assert "max_size='1kB'" in meta["skipped"] and "sha256" not in meta
    skipped = client.get_run(run_id).data.tags[SKIPPED_TAG]
    assert f"checkpoints/val_loss/{best}: " in skipped and "checkpoints/val_loss/last.ckpt: " in skipped
    warnings = [r.getMessage() for r in caplog.records if "max_size" in r.getMessage()]
    assert len([w for w in warnings if callback.best_model_path in w]) == 1  # once per file
    assert any(str(size) in w for w in warnings)
    assert models_of(client, run_id) == [], "a checkpoint the run does not get makes no logged model"
    with pytest.raises(LightningMLflowError, match=r"was not uploaded: .*max_size"):
        load_checkpoint(run_id, tracking_uri=tracking_uri, dst_path=tmp_path / "dl")


def test_local_copies_go_once_stored_but_best_and_last_stay(tracking_uri, client, tmp_path):
    options = CheckpointUploadPolicy(delete_local_after_upload=True)
    # top-2 of 3 epochs: Lightning prunes a file this may have removed already.
    logger, callback, trainer = fit(tmp_path, tracking_uri, options, save_top_k=2, max_epochs=3)
    run_id = logger.run_id
    logger.flush()
    stored = [f for f in listing(client, run_id, "checkpoints/val_loss") if f.endswith(".ckpt")]
    kept = sorted(os.listdir(tmp_path / "ckpt"))

    assert kept == sorted({os.path.basename(callback.best_model_path), "last.ckpt"})
    assert set(callback.best_k_models) - {callback.best_model_path}  # a top-k file: in the run, not on disk
    for path in callback.best_k_models:
        assert os.path.basename(path) in stored
    assert "last.ckpt" in stored
    trainer.test(ckpt_path="best", datamodule=TinyData())  # Lightning still finds the best checkpoint
    assert "test_loss" in client.get_run(run_id).data.metrics


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": -1}, "must not be negative"),
        ({"max_size": "-5MB"}, "must not be negative"),
        ({"max_size": "lots"}, "is not a size: .*'500MB'"),
        ({"max_size": "5 XB"}, "is not a size"),
        ({"exclude": [""]}, "glob patterns"),
        ({"weights_only": "yes"}, "weights_only must be True or False"),
        ({"keep_best": True}, r"no option \['keep_best'\]"),
    ],
)
def test_bad_log_model_options_fail_before_any_run(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", log_model=True, log_model_options=options)


def test_log_model_options_without_log_model_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="log_model=True or 'all'"):
        MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", log_model_options={"weights_only": True})
