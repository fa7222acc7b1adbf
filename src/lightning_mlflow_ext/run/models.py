"""The best checkpoint as an MLflow Model in the run's own experiment, optionally registered as ``@best``.

Built with explicit client calls: ``mlflow.pytorch.log_model`` reads the global tracking URI and experiment.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from types import ModuleType
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lightning_mlflow_ext.run.tags import MODEL_CHECKPOINT_TAG, MODEL_STEP_TAG

BEST_ALIAS = "best"


@dataclass
class LoggedBestModel:
    model_id: str
    registered_version: str | None


def mlflow_pytorch() -> ModuleType:
    """``mlflow.pytorch``, imported without the side effect of its Lightning autolog module: that calls
    ``logging.basicConfig(level=ERROR)`` at import, which silences every warning of the process (ours too)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return importlib.import_module("mlflow.pytorch")
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _requirements() -> list[str]:
    # Given explicitly: inferring them runs the model in a subprocess, slow and fragile at the end of a fit.
    return [f"{package}=={version(package)}" for package in ("torch", "lightning", "mlflow")]


def log_best_model(
    client: MlflowClient,
    *,
    run_id: str,
    experiment_id: str,
    module: Any,
    checkpoint_artifact: str,
    step: int,
    metrics: dict[str, float],
    registered_model_name: str | None = None,
) -> LoggedBestModel:
    """Save ``module`` (already loaded from the best checkpoint) as an MLflow Model of the run."""
    tags = {MODEL_CHECKPOINT_TAG: checkpoint_artifact, MODEL_STEP_TAG: str(step)}
    params = {key: repr(float(value)) for key, value in metrics.items()}
    logged = client.create_logged_model(
        experiment_id, name="best", source_run_id=run_id, tags=tags, params=params, model_type="pytorch"
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/model"
            mlflow_pytorch().save_model(module, path, serialization_format="pickle", pip_requirements=_requirements())
            client.log_model_artifacts(logged.model_id, path)
        client.finalize_logged_model(logged.model_id, "READY")
    except Exception:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    registered = None
    if registered_model_name:
        try:
            client.create_registered_model(registered_model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The model's own artifact location, not "models:/<id>": MLflow resolves that one through the global
        # tracking URI, which need not be this logger's store.
        model_version = client.create_model_version(
            registered_model_name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id
        )
        client.set_registered_model_alias(registered_model_name, BEST_ALIAS, str(model_version.version))
        registered = str(model_version.version)
    return LoggedBestModel(logged.model_id, registered)
