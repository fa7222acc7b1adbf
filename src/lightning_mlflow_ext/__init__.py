"""PyTorch Lightning logger that makes MLflow the record of a training run."""

from lightning_mlflow_ext.callback import MLflowCallback
from lightning_mlflow_ext.errors import (
    DeletedExperimentError,
    DeletedRunError,
    InvalidArtifactPathError,
    LightningMLflowError,
    RunNotFoundError,
    TrackingServerUnavailableError,
    WriteRefusedError,
)
from lightning_mlflow_ext.loading import load_checkpoint, load_model
from lightning_mlflow_ext.logger import MLflowLogger

__version__ = "0.1.0"

__all__ = [
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
    "load_checkpoint",
    "load_model",
]
