"""Every documented import path and entry point keeps working, whatever the modules behind them are called."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import pytest

DOCUMENTED = [
    ("lightning_mlflow_ext", "MLflowLogger"),
    ("lightning_mlflow_ext", "MLflowCallback"),
    ("lightning_mlflow_ext", "autolog"),
    ("lightning_mlflow_ext", "load_checkpoint"),
    ("lightning_mlflow_ext", "load_model"),
    ("lightning_mlflow_ext.lineage", "GitDatasetSource"),
    ("lightning_mlflow_ext.lineage", "DVCDatasetSource"),
    ("lightning_mlflow_ext.lightning_cli", "MLflowSaveConfigCallback"),
    ("lightning_mlflow_ext.pytorch_lightning", "MLflowLogger"),
    ("lightning_mlflow_ext.pytorch_lightning", "MLflowCallback"),
    ("lightning_mlflow_ext.ui", "run_link"),
    ("lightning_mlflow_ext.optuna", "record_best_trial"),
]


@pytest.mark.parametrize(("module", "name"), DOCUMENTED, ids=[f"{m}.{n}" for m, n in DOCUMENTED])
def test_documented_name_imports(module: str, name: str) -> None:
    assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize(
    ("group", "name"),
    [
        ("lightning.pytorch.callbacks_factory", "lightning_mlflow_ext"),
        # From the installed metadata: passes once the package is (re)installed from this pyproject.toml.
        ("pytorch_lightning.callbacks_factory", "lightning_mlflow_ext"),
        ("mlflow.dataset_source", "git"),
        ("mlflow.dataset_source", "dvc"),
        ("console_scripts", "lightning-mlflow"),
    ],
)
def test_entry_point_loads(group: str, name: str) -> None:
    (point,) = [point for point in entry_points(group=group) if point.name == name]
    assert callable(point.load())
