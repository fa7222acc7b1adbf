"""Finding the checkpoint a logged model holds: ``models:/<id>`` or a bare model id, for ``load_checkpoint``.

A checkpoint's logged model holds the file itself; the best model (an MLflow Model) names the checkpoint of its
run it was built from, which is then downloaded from that run.
"""

from __future__ import annotations

import os
import posixpath
import re

from mlflow import MlflowClient
from mlflow.entities.logged_model import LoggedModel
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from lightning_mlflow_ext.errors import LightningMLflowError
from lightning_mlflow_ext.run.downloads import download_model_file_to_cache, download_to_cache
from lightning_mlflow_ext.run.tags import MODEL_CHECKPOINT_TAG
from lightning_mlflow_ext.values.urls import strip_url_credentials

_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def model_id_of(reference: str) -> str | None:
    """The logged model id ``reference`` names (``models:/<id>`` or ``m-<hex>``), else None (a run)."""
    if reference.startswith("models:/"):
        return reference[len("models:/") :].strip("/").split("/")[0]
    return reference if _MODEL_ID.fullmatch(reference) else None


def _get_model(client: MlflowClient, model_id: str, uri: str) -> LoggedModel:
    try:
        return client.get_logged_model(model_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "ENDPOINT_NOT_FOUND"):
            raise
        raise LightningMLflowError(
            f"No logged model {model_id!r} in the tracking store {strip_url_credentials(uri)}; give the model's id "
            "as MLflow shows it (models:/m-...), and tracking_uri= or MLFLOW_TRACKING_URI for the store it is in."
        ) from None


def load_model_checkpoint(client: MlflowClient, model_id: str, which: str, dst_path: str | None) -> str:
    """Download the checkpoint of the logged model ``model_id`` (``which``: a file name inside the model, else the
    checkpoint it holds or names) and return its local path."""
    uri = str(client.tracking_uri)
    model = _get_model(client, model_id, uri)
    location = add_databricks_profile_info_to_artifact_uri(model.artifact_location, uri)  # type: ignore[no-untyped-call]
    repository = get_artifact_repository(location, tracking_uri=uri)
    files = [info.path for info in repository.list_artifacts() if not info.is_dir]
    named = model.tags.get(MODEL_CHECKPOINT_TAG)
    wanted = which if which not in ("best", "latest") else posixpath.basename(named) if named else None
    if wanted in files:
        if dst_path is None:
            return download_model_file_to_cache(repository.download_artifacts, model_id, str(wanted))
        os.makedirs(dst_path, exist_ok=True)
        return str(repository.download_artifacts(wanted, str(dst_path)))  # type: ignore[no-untyped-call]
    if which in ("best", "latest") and named and model.source_run_id:
        # The best model names the checkpoint of its run it was built from.
        if dst_path is None:
            return download_to_cache(client, model.source_run_id, named)
        os.makedirs(dst_path, exist_ok=True)
        return client.download_artifacts(model.source_run_id, named, str(dst_path))
    raise LightningMLflowError(
        f"The logged model {model_id} ({model.name}) holds no checkpoint {wanted or ''} (its files: {sorted(files)}). "
        "A model logged by this package's checkpoints holds one; an MLflow Model loads with "
        f"mlflow.pytorch.load_model('models:/{model_id}')."
    )
