"""Public import path of the LightningCLI support: ``lightning_mlflow_ext.lightning_cli.MLflowSaveConfigCallback``.

The code lives in ``trainer/cli.py``.
"""

from lightning_mlflow_ext.trainer.cli import MLflowSaveConfigCallback

__all__ = ["MLflowSaveConfigCallback"]
