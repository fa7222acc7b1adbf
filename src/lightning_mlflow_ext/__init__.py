"""PyTorch Lightning logger that makes MLflow the record of a training run."""

from lightning_mlflow_ext.errors import (
    DeletedExperimentError,
    DeletedRunError,
    LightningMLflowError,
    RunNotFoundError,
    TrackingServerUnavailableError,
)
from lightning_mlflow_ext.logger import MLflowLogger

__version__ = "0.1.0"

__all__ = [
    "DeletedExperimentError",
    "DeletedRunError",
    "LightningMLflowError",
    "MLflowLogger",
    "RunNotFoundError",
    "TrackingServerUnavailableError",
    "__version__",
]
