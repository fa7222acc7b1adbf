"""The best model (``log_best_model`` / ``registered_model_name``): a signature and input example, an explicit
serialization format, and the scores of its checkpoint as metrics linked to it, read back through MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow import MlflowClient
from mlflow.models import Model
from tiny import N_FEATURES, TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.run.models import mlflow_pytorch
from lightning_mlflow_ext.run.tags import BEST_MODEL_ID_TAG, MODEL_SERIALIZATION_TAG
from lightning_mlflow_ext.trainer.model_example import InputExample


class WorseAtTheEnd(TinyModel):
    """Its validation loss jumps in the second epoch: the best checkpoint is the first epoch's, not the last."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch) + (10.0 if self.current_epoch == 1 else 0.0))


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    # One store for the module (each test has its own run): creating a SQLite store is most of a test's time.
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(params=["sqlite", "server"], ids=["sqlite", "server"])
def tracking_uri(request, sqlite_store) -> str:
    return sqlite_store if request.param == "sqlite" else request.getfixturevalue("mlflow_server").uri


def fit_best(uri: str, experiment: str, tmp_path: Path, monitor: str = "val_loss", mode: str = "min", **options):
    logger = MLflowLogger(experiment_name=experiment, tracking_uri=uri, log_best_model=True, **options)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor, mode=mode, save_top_k=1)
    trainer = make_trainer(
        logger, max_epochs=2, enable_checkpointing=True, callbacks=[callback], limit_train_batches=3,
        limit_val_batches=0 if monitor.startswith("train") else None,
    )  # fmt: skip
    trainer.fit(WorseAtTheEnd(lr=0.03), TinyData())
    return logger


def test_best_model_has_a_signature_an_input_example_and_its_checkpoints_scores(
    tracking_uri, client, experiment_name, tmp_path, monkeypatch
):
    name = f"best-{experiment_name[-12:]}"
    logger = fit_best(tracking_uri, experiment_name, tmp_path, registered_model_name=name)

    model_id = client.get_run(logger.run_id).data.tags[BEST_MODEL_ID_TAG]
    model = client.get_logged_model(model_id)
    assert client.get_model_version_by_alias(name, "best").source == model.artifact_location
    assert model.tags[MODEL_SERIALIZATION_TAG] == "pickle"
    assert "val_loss" not in model.params  # scores are metrics, params stay for hyperparameters

    # Its scores: the first epoch's val_loss, the very point the run holds (no second point in the run's history).
    history = client.get_metric_history(logger.run_id, "val_loss")
    assert [point.step for point in history] == [0, 1] and history[1].value > history[0].value
    linked = {metric.key: metric for metric in model.metrics}
    assert (linked["val_loss"].value, linked["val_loss"].step) == (history[0].value, 0)
    assert linked["val_loss"].timestamp == history[0].timestamp
    # The training loss of the epoch it was saved in too, which Lightning hands the logger just after the save.
    first_train = client.get_metric_history(logger.run_id, "train_loss_epoch")[0]
    assert (linked["train_loss_epoch"].value, linked["train_loss_epoch"].step) == (first_train.value, 0)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # models:/ URIs are read through the global store
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature is not None
    assert info.signature.inputs.inputs[0].shape == (-1, N_FEATURES)
    assert info.signature.outputs.inputs[0].shape == (-1, 1)
    assert "input_example.json" in [item.path for item in client.list_logged_model_artifacts(model_id)]

    local = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "model"))
    example = Model.load(local).load_input_example(local)
    assert isinstance(example, np.ndarray) and example.shape == (2, N_FEATURES)
    loaded = mlflow_pytorch().load_model(f"models:/{model_id}")
    with torch.no_grad():
        assert loaded(torch.from_numpy(example)).shape == (2, 1)


def test_without_signature_or_input_example_when_asked_and_scores_sent_after_the_save(
    sqlite_store, tmp_path, monkeypatch
):
    uri = sqlite_store
    # mode="max" on a falling loss: the best is the first epoch's. Saved at the end of a training epoch, before
    # Lightning hands the logger that epoch's train_loss_epoch: linked to the point sent just after the save.
    logger = fit_best(
        uri, "opt-out", tmp_path, monitor="train_loss_epoch", mode="max", model_signature=False,
        model_input_example=False,
    )  # fmt: skip
    client = MlflowClient(uri)
    model_id = client.get_run(logger.run_id).data.tags[BEST_MODEL_ID_TAG]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.models.get_model_info(f"models:/{model_id}").signature is None
    assert "input_example.json" not in [item.path for item in client.list_logged_model_artifacts(model_id)]
    first = client.get_metric_history(logger.run_id, "train_loss_epoch")[0]
    linked = {metric.key: metric for metric in client.get_logged_model(model_id).metrics}
    assert (linked["train_loss_epoch"].value, linked["train_loss_epoch"].step) == (first.value, first.step)


def test_the_input_example_is_the_first_batchs_input_or_example_input_array(caplog):
    module = torch.nn.Linear(N_FEATURES, 1)
    x, y = torch.randn(8, N_FEATURES), torch.randn(8, 1)
    example = InputExample()
    example.note_batch((x, y))
    example.note_batch((torch.zeros(8, N_FEATURES), y))  # only the first batch counts
    pair = example.pair(module)
    assert pair is not None and torch.equal(pair[0], x[:2]) and pair[1].shape == (2, 1)

    declared = torch.ones(3, N_FEATURES)
    pair = example.pair(module, declared)
    assert pair is not None and torch.equal(pair[0], declared)

    caplog.set_level(logging.INFO, logger="lightning_mlflow_ext.trainer.model_example")
    by_name = InputExample()
    by_name.note_batch({"x": x, "y": y})  # which entry the model takes is not said: no example, no error
    assert by_name.pair(module) is None
    assert example.pair(module, (x, x)) is None  # a forward of several tensors: MLflow's PyTorch models take one
    assert [record.levelno for record in caplog.records] == [logging.INFO, logging.INFO]
    assert "example_input_array" in caplog.records[0].getMessage()
