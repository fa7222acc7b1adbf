"""Checkpoints as MLflow 3 logged models: each uploaded checkpoint a READY logged model of the run, with the
metrics of its epoch linked to it (val metrics on the run's val dataset), ranked by search_logged_models; a
pruned checkpoint's model deleted; loadable by ``models:/<id>``; a store without logged models keeps plain
artifacts."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lineage_repos import git_repo
from mlflow.models import Model
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowCallback, MLflowLogger, load_model
from lightning_mlflow_ext.run.tags import MODEL_CHECKPOINT_TAG

FEW_BATCHES = {"limit_train_batches": 2, "limit_val_batches": 2, "enable_checkpointing": True}


def _fit_with_datasets(tracking_uri, experiment_name, tmp_path, *, epochs, **logger_options):
    repo = git_repo(tmp_path / "project", {"data/train.csv": "a,b\n1,2\n", "data/val.csv": "a,b\n3,4\n"})
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, **logger_options)
    datasets = MLflowCallback(datasets={"train": repo / "data/train.csv", "val": repo / "data/val.csv"})
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=2)
    trainer = make_trainer(logger, max_epochs=epochs, callbacks=[datasets, checkpoint], **FEW_BATCHES)
    trainer.fit(TinyModel(), TinyData())
    return logger, checkpoint


def test_each_checkpoint_is_a_ready_logged_model_with_its_metrics_ranked_by_val_loss(
    tracking_uri, client, experiment_name, tmp_path
):
    registered = f"reg-{experiment_name}"
    logger, checkpoint = _fit_with_datasets(
        tracking_uri, experiment_name, tmp_path, epochs=3, log_model="all", registered_model_name=registered
    )
    run = client.get_run(logger.run_id)
    val_input = next(i.dataset for i in run.inputs.dataset_inputs if any(t.value == "val" for t in i.tags))

    ranked = client.search_logged_models(
        [run.info.experiment_id], order_by=[{"field_name": "metrics.val_loss", "ascending": True}]
    )
    uploaded = sorted(a.path for a in client.list_artifacts(logger.run_id, "checkpoints/val_loss"))
    assert sorted(m.tags[MODEL_CHECKPOINT_TAG] for m in ranked) == [p for p in uploaded if p.endswith(".ckpt")]
    assert len(ranked) == 2, "save_top_k=2: the pruned checkpoint's model is deleted with its file"
    assert all(str(m.status) == "READY" and m.source_run_id == logger.run_id for m in ranked)
    assert ranked[0].tags[MODEL_CHECKPOINT_TAG].endswith("/" + checkpoint.best_model_path.rsplit("/", 1)[1])
    assert ranked[0].params == run.data.params
    for model in ranked:
        val_loss = [m for m in model.metrics if m.key == "val_loss"]
        assert [m.step for m in val_loss] == [int(model.tags["lightning_mlflow_ext.epoch"])]
        assert (val_loss[0].dataset_name, val_loss[0].dataset_digest) == ("val", val_input.digest)
        assert float(model.tags["lightning_mlflow_ext.score"]) == val_loss[0].value
        assert {"train_loss_step"} <= {m.key for m in model.metrics}
    outputs = {o.model_id for o in run.outputs.model_outputs}
    assert {m.model_id for m in ranked} < outputs and len(outputs) == 3, "every checkpoint was an output of the run"
    assert len(client.get_metric_history(logger.run_id, "val_loss")) == 3, "linking adds no point to the run"

    # The best checkpoint's own logged model is the best model: registered @best, with a signature; not a third.
    version = client.get_model_version_by_alias(registered, "best")
    assert version.source == ranked[0].artifact_location
    assert run.data.tags["lightning_mlflow_ext.best_model_id"] == ranked[0].model_id
    # Read through the model's artifact repository: MLflow 3.2's list_logged_model_artifacts reads the global store.
    repository = get_artifact_repository(ranked[0].artifact_location, tracking_uri=tracking_uri)
    files = {a.path for a in repository.list_artifacts()}
    assert {"MLmodel", "input_example.json", ranked[0].tags[MODEL_CHECKPOINT_TAG].rsplit("/", 1)[1]} <= files
    mlmodel = Model.load(repository.download_artifacts("MLmodel", str(tmp_path)))
    assert mlmodel.signature is not None and mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 8)

    best = load_model(TinyModel, f"models:/{ranked[0].model_id}", tracking_uri=tracking_uri)
    local = TinyModel.load_from_checkpoint(checkpoint.best_model_path)
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), local.state_dict().values(), strict=True))


def test_a_store_without_logged_models_keeps_plain_artifacts_and_says_so_once(
    fault_proxy, experiment_name, tmp_path, caplog
):
    import mlflow

    fault_proxy.fail_every(1, status=404, error_code="ENDPOINT_NOT_FOUND", path_contains="/logged-models")
    with caplog.at_level(logging.WARNING):
        logger, _ = _fit_with_datasets(fault_proxy.uri, experiment_name, tmp_path, epochs=2, log_model="all")
    said = [r for r in caplog.records if "no logged-model API" in r.getMessage()]
    assert len(said) == 1
    client = mlflow.MlflowClient(fault_proxy.upstream)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(logger.run_id, "checkpoints/val_loss")]
    assert client.search_logged_models([run.info.experiment_id]) == []
