"""PyTorch Lightning logger that makes MLflow the record of a training run.

The public names load on first use: MLflow imports this package's dataset sources (an entry point) on
its own import, and that must not drag Lightning and torch into every process that imports MLflow.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Warnings of this package (undelivered points, refused names) must be heard even when something lowered the
# root logger to ERROR (mlflow.pytorch's autolog module does, at import). A level the user set is kept.
if logging.getLogger(__name__).level == logging.NOTSET:
    logging.getLogger(__name__).setLevel(logging.WARNING)

_PUBLIC = {
    "MLflowLogger": "lightning_mlflow_ext.trainer.logger",
    "MLflowCallback": "lightning_mlflow_ext.trainer.callback",
    "CheckpointUploadPolicy": "lightning_mlflow_ext.trainer.checkpoint_policy",
    "autolog": "lightning_mlflow_ext.trainer.autolog",
    "load_checkpoint": "lightning_mlflow_ext.run.loading",
    "load_model": "lightning_mlflow_ext.run.loading",
    "DeletedExperimentError": "lightning_mlflow_ext.errors",
    "DeletedRunError": "lightning_mlflow_ext.errors",
    "InvalidArtifactPathError": "lightning_mlflow_ext.errors",
    "LightningMLflowError": "lightning_mlflow_ext.errors",
    "RunNotFoundError": "lightning_mlflow_ext.errors",
    "TrackingServerUnavailableError": "lightning_mlflow_ext.errors",
    "WriteRefusedError": "lightning_mlflow_ext.errors",
}

if TYPE_CHECKING:
    from lightning_mlflow_ext.errors import (
        DeletedExperimentError,
        DeletedRunError,
        InvalidArtifactPathError,
        LightningMLflowError,
        RunNotFoundError,
        TrackingServerUnavailableError,
        WriteRefusedError,
    )
    from lightning_mlflow_ext.run.loading import load_checkpoint, load_model
    from lightning_mlflow_ext.trainer.autolog import autolog
    from lightning_mlflow_ext.trainer.callback import MLflowCallback
    from lightning_mlflow_ext.trainer.checkpoint_policy import CheckpointUploadPolicy
    from lightning_mlflow_ext.trainer.logger import MLflowLogger


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_mlflow_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointUploadPolicy",
    "DeletedExperimentError",
    "DeletedRunError",
    "InvalidArtifactPathError",
    "LightningMLflowError",
    "MLflowCallback",
    "MLflowLogger",
    "RunNotFoundError",
    "TrackingServerUnavailableError",
    "WriteRefusedError",
    "__version__",
    "autolog",
    "load_checkpoint",
    "load_model",
]
