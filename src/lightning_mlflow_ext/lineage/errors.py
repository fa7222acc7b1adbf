"""Errors of the data-lineage package.

Each message says what happened and what to do about it.
"""

from __future__ import annotations

from lightning_mlflow_ext.errors import LightningMLflowError

DVC_INSTALL_HINT = "install the [dvc] extra: pip install 'lightning-mlflow-ext[dvc]'"


class LineageError(LightningMLflowError):
    """Base class of the data-lineage errors."""


class DataPathNotFoundError(LineageError, FileNotFoundError):
    """The path to fingerprint is neither on disk nor recorded by DVC."""


class DVCNotInstalledError(LineageError, ImportError):
    """DVC-tracked data needs the ``dvc`` package, which is not installed."""


class SourceLoadError(LineageError):
    """A recorded dataset version could not be fetched."""
