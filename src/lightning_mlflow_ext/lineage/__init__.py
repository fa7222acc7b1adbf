"""Data lineage: which data version and code a run used, recorded as MLflow dataset inputs and git tags.

Works without DVC installed; DVC-tracked data then needs the ``[dvc]`` extra for its md5 and remote state.
"""

# MLflow imports `lineage.sources` through its `mlflow.dataset_source` entry point while `import mlflow` runs.
# Importing MLflow first means that, when this package is imported before MLflow, `sources` is loaded whole by
# that entry point instead of being found half-initialized. While MLflow is being imported, this is a no-op,
# so nothing below may need a name MLflow defines late (`from mlflow import MlflowClient` would fail).
import mlflow.data  # noqa: F401  isort: skip

from lightning_mlflow_ext.lineage.dataset import LineageDataset, dataset_source, lineage_dataset, log_datasets
from lightning_mlflow_ext.lineage.errors import (
    DataPathNotFoundError,
    DVCNotInstalledError,
    LineageError,
    SourceLoadError,
)
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint, fingerprint
from lightning_mlflow_ext.lineage.git import DIFF_LIMIT, code_diff, code_state, untracked_files
from lightning_mlflow_ext.lineage.sources import DVCDatasetSource, GitDatasetSource

__all__ = [
    "DIFF_LIMIT",
    "DVCDatasetSource",
    "DVCNotInstalledError",
    "DataPathNotFoundError",
    "Fingerprint",
    "GitDatasetSource",
    "LineageDataset",
    "LineageError",
    "SourceLoadError",
    "code_diff",
    "code_state",
    "dataset_source",
    "fingerprint",
    "lineage_dataset",
    "log_datasets",
    "untracked_files",
]
