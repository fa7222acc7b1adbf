"""LightningCLI support: the resolved CLI config recorded in the MLflow run.

Usage::

    from lightning.pytorch.cli import LightningCLI
    from lightning_mlflow_ext.trainer.cli import MLflowSaveConfigCallback

    LightningCLI(MyModel, MyData, save_config_callback=MLflowSaveConfigCallback)
    # python train.py fit --config config.yaml --trainer.logger=lightning_mlflow_ext.MLflowLogger

Kept out of the package's top-level names: importing it imports ``lightning.pytorch.cli`` (and jsonargparse).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning.pytorch as pl

# Before this package's values modules: importing MLflow loads its mlflow.dataset_source entry points, which
# import values.urls; MLflow first means they load it whole rather than find a values module half-initialized.
import mlflow  # noqa: F401
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.values.config_file import redacted_yaml
from lightning_mlflow_ext.values.redaction import Redactor

__all__ = ["MLflowSaveConfigCallback"]

log = logging.getLogger(__name__)


def _mlflow_loggers(trainer: pl.Trainer) -> list[MLflowLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, MLflowLogger)]


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` that also records the config in the run of every ``MLflowLogger``.

    Pass it as ``LightningCLI(..., save_config_callback=MLflowSaveConfigCallback)``; ``save_config_kwargs``
    (``config_filename``, ``overwrite``, ``multifile``, ``save_to_log_dir``) work as for Lightning's callback.
    Once, on rank 0, each ``MLflowLogger`` of the Trainer receives:

    * the artifact ``config.yaml`` (``config_filename``): the resolved config, as the CLI dumps it;
    * the config as params under ``config/``, flattened with ``/`` like every hyperparameter
      (``config/model/lr``, or ``config/model/init_args/lr`` for a ``class_path`` model,
      ``config/trainer/max_epochs``, ``config/data/batch_size``). The prefix keeps them apart from the
      hyperparameters Lightning logs itself (the model's ``lr``, ``optimizer``, ...); set ``param_prefix``
      in a subclass to change it (``""``: none).

    Secret-looking keys and credentials in URLs are removed from both, as from every param.

    The local copy is written as Lightning does, except with an ``MLflowLogger`` first in the Trainer: then it
    goes into the run's own folder, ``logger.log_dir`` (``save_dir/<experiment>/<run id>/config.yaml``).
    Lightning's ``trainer.log_dir`` is that logger's ``save_dir``, shared by every run, where a second run would
    find the first one's config and refuse to start. A config already in the run's folder is from an earlier
    invocation of the same run (a resumed fit, ``run_id=``), and is replaced, as is the artifact.

    In a fit, all this happens when training (or its sanity check) starts rather than at ``setup``: a fit that
    resumes from a checkpoint continues the checkpoint's run, which is known only once the checkpoint is read.
    """

    param_prefix: str = "config"
    #: The local copy is in the run's folder, not in Trainer.log_dir (the bridge leaves it alone).
    saves_into_run_folder: bool = True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and _mlflow_loggers(trainer):
            return  # on_sanity_check_start / on_train_start, after Lightning restores a checkpoint
        self._save(trainer, pl_module, stage)

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """``SaveConfigCallback.setup`` with the local copy in the run's folder."""
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self._save_locally(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # every rank agrees on future calls, as in Lightning's callback
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _save_locally(self, trainer: pl.Trainer) -> None:
        first = trainer.loggers[0] if trainer.loggers else None
        if isinstance(first, MLflowLogger):
            # The run is resolved on rank 0; the other ranks take its folder from there.
            log_dir: str | None = trainer.strategy.broadcast(first.log_dir if trainer.is_global_zero else "")
        else:
            log_dir = trainer.log_dir  # broadcasts
        assert log_dir
        config_path = os.path.join(log_dir, self.config_filename)
        fs = get_filesystem(log_dir)
        overwrite = self.overwrite or isinstance(first, MLflowLogger)  # the run's folder: see the class doc
        if not overwrite:
            exists = fs.isfile(config_path) if trainer.is_global_zero else False
            if trainer.strategy.broadcast(exists):
                raise RuntimeError(
                    f"{type(self).__name__} expected {config_path} to NOT exist. Aborting to avoid overwriting the "
                    "config of a previous run. Delete it, or pass LightningCLI(save_config_kwargs="
                    '{"overwrite": True}) to overwrite it.'
                )
        if trainer.is_global_zero:
            fs.makedirs(log_dir, exist_ok=True)
            self.parser.save(self.config, config_path, skip_none=False, overwrite=overwrite, multifile=self.multifile)

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = _mlflow_loggers(trainer)
        if not loggers:
            # save_config runs on rank 0 only
            log.warning(
                "%s: the Trainer has no MLflowLogger, so the config is not recorded in MLflow "
                "(pass --trainer.logger=lightning_mlflow_ext.MLflowLogger).",
                type(self).__name__,
            )
            return
        for logger in loggers:  # each with its own redact= patterns
            text, config = self._config_text(logger.redactor)
            logger.log_hyperparams({self.param_prefix: config} if self.param_prefix else config)
            logger.log_text(text, self.config_filename)

    def _config_text(self, redactor: Redactor) -> tuple[str, dict[str, Any]]:
        """The YAML that is uploaded and the dict that is logged as params: the same values, secrets removed."""
        # skip_none=False, as Lightning saves it: a None that is left out would take the default on a rerun.
        return redacted_yaml(self.parser.dump(self.config, skip_none=False), redactor)
