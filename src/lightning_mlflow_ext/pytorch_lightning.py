"""The classes for ``pytorch_lightning`` (``import pytorch_lightning as pl``), e.g. as LightningCLI class paths::

    trainer:
      logger:
        class_path: lightning_mlflow_ext.pytorch_lightning.MLflowLogger

They are ``lightning_mlflow_ext.MLflowLogger`` / ``MLflowCallback`` that are also ``pytorch_lightning`` classes.
In Python, ``lightning_mlflow_ext.MLflowLogger(...)`` already makes one of these once ``pytorch_lightning`` is
imported. Importing this module imports ``pytorch_lightning``.
"""

from __future__ import annotations

from lightning_mlflow_ext.trainer.pl_classes import MLflowCallback, MLflowLogger

__all__ = ["MLflowCallback", "MLflowLogger"]
