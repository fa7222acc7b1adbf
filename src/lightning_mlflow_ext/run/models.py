"""The best checkpoint as an MLflow Model in the run's own experiment, optionally registered as ``@best``.

Saved here, on disk; logged and registered by the run's delivery (``delivery.logged_models``), so a model made
while the store is unreachable arrives with ``lightning-mlflow sync`` like every other write.
``mlflow.pytorch.log_model`` is not used: it reads the global tracking URI and experiment.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from importlib.metadata import version
from inspect import signature
from types import ModuleType
from typing import Any

from lightning_mlflow_ext.delivery.logged_models import model_details
from lightning_mlflow_ext.run.tags import BEST_MODEL_ID_TAG, MODEL_CHECKPOINT_TAG, MODEL_STEP_TAG

BEST_ALIAS = "best"


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


def save_pickled(module: Any, folder: str | os.PathLike[str], **options: Any) -> None:
    """``mlflow.pytorch.save_model`` of the whole pickled module, on every supported MLflow: before 3.11 pickle is
    its only format and it takes no ``serialization_format``."""
    pytorch = mlflow_pytorch()
    if "serialization_format" in signature(pytorch.save_model).parameters:
        options["serialization_format"] = "pickle"
    pytorch.save_model(module, str(folder), **options)


def save_best_model(
    module: Any,
    folder: str | os.PathLike[str],
    *,
    experiment_id: str,
    checkpoint_artifact: str,
    step: int,
    metrics: dict[str, float],
    registered_model_name: str | None = None,
) -> dict[str, Any]:
    """Save ``module`` (already loaded from the best checkpoint) as an MLflow Model in ``folder`` and return what
    the ``model`` change that logs it into the run carries (``delivery.logged_models``): the logged model
    ``best`` of the run's experiment, tagged with its checkpoint, its id in the run's ``best_model_id`` tag, and
    registered as ``<registered_model_name>@best`` when a name is given."""
    save_pickled(module, folder, pip_requirements=_requirements())
    return model_details(
        change_id=uuid.uuid4().hex,
        experiment_id=experiment_id,
        name="best",
        tags={MODEL_CHECKPOINT_TAG: checkpoint_artifact, MODEL_STEP_TAG: str(step)},
        params={key: repr(float(value)) for key, value in metrics.items()},
        model_type="pytorch",
        run_tag=BEST_MODEL_ID_TAG,
        registered_model_name=registered_model_name,
        alias=BEST_ALIAS if registered_model_name else None,
    )
