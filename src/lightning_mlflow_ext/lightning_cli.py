"""LightningCLI support: the resolved CLI config recorded in the MLflow run.

Usage::

    from lightning.pytorch.cli import LightningCLI
    from lightning_mlflow_ext.lightning_cli import MLflowSaveConfigCallback

    LightningCLI(MyModel, MyData, save_config_callback=MLflowSaveConfigCallback)
    # python train.py fit --config config.yaml --trainer.logger=lightning_mlflow_ext.MLflowLogger

Kept out of the package's top-level names: importing it imports ``lightning.pytorch.cli`` (and jsonargparse).
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from lightning_mlflow_ext.keys import REDACTED, is_secret_key, strip_url_credentials
from lightning_mlflow_ext.logger import MLflowLogger

__all__ = ["MLflowSaveConfigCallback"]

log = logging.getLogger(__name__)


def _redact(value: Any, path: str) -> Any:
    """``value`` with the secrets the logger keeps out of params (secret-looking keys, credentials in URLs)
    removed, lists included: a list is one param, so its items are not otherwise looked into."""
    if isinstance(value, dict):
        return {key: _redact(item, f"{path}/{key}" if path else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, f"{path}/{index}") for index, item in enumerate(value)]
    if path and is_secret_key(path):
        return REDACTED
    if isinstance(value, str):
        return strip_url_credentials(value)
    return value


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` that also records the config in the run of every ``MLflowLogger``.

    Pass it as ``LightningCLI(..., save_config_callback=MLflowSaveConfigCallback)``; ``save_config_kwargs``
    (``config_filename``, ``overwrite``, ``multifile``, ``save_to_log_dir``) work as for Lightning's callback.
    At the start of the first stage, on rank 0, each ``MLflowLogger`` of the Trainer receives:

    * the artifact ``config.yaml`` (``config_filename``): the resolved config, as the CLI dumps it;
    * the config as params, flattened with ``/`` like every hyperparameter (``model/lr``, or
      ``model/init_args/lr`` for a ``class_path`` model, ``trainer/max_epochs``, ``data/batch_size``).

    Secret-looking keys and credentials in URLs are removed from both, as from every param. The local copy is
    written as Lightning does, except that with an ``MLflowLogger`` first in the Trainer it goes into the run's
    own folder, ``logger.log_dir`` (``save_dir/<experiment>/<run id>/config.yaml``): Lightning's ``trainer.log_dir``
    is the logger's ``save_dir``, shared by every run, where a second run would find the first one's config and
    refuse to start.
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self._save_locally(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # every rank agrees on future calls to setup(), as in Lightning's callback
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def _local_dir(self, trainer: pl.Trainer) -> str:
        first = trainer.loggers[0] if trainer.loggers else None
        if not isinstance(first, MLflowLogger):
            log_dir = trainer.log_dir  # broadcasts
            assert log_dir is not None
            return log_dir
        # The run is resolved on rank 0; the other ranks take its folder from there.
        path = first.log_dir if trainer.is_global_zero else ""
        folder: str = trainer.strategy.broadcast(path)
        return folder

    def _save_locally(self, trainer: pl.Trainer) -> None:
        """Lightning's behaviour, in the run's folder: refuse to overwrite unless ``overwrite=True``."""
        log_dir = self._local_dir(trainer)
        config_path = os.path.join(log_dir, self.config_filename)
        fs = get_filesystem(log_dir)
        if not self.overwrite:
            exists = fs.isfile(config_path) if trainer.is_global_zero else False
            if trainer.strategy.broadcast(exists):
                raise RuntimeError(
                    f"{type(self).__name__} expected {config_path} to NOT exist. Aborting to avoid overwriting the "
                    "config of a previous run. Delete it, or pass LightningCLI(save_config_kwargs="
                    '{"overwrite": True}) to overwrite it.'
                )
        if trainer.is_global_zero:
            fs.makedirs(log_dir, exist_ok=True)
            self.parser.save(
                self.config, config_path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
            )

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, MLflowLogger)]
        if not loggers:
            # save_config runs on rank 0 only
            log.warning(
                "%s: the Trainer has no MLflowLogger, so the config is not recorded in MLflow "
                "(pass --trainer.logger=lightning_mlflow_ext.MLflowLogger).",
                type(self).__name__,
            )
            return
        text, config = self._config_text()
        for logger in loggers:
            logger.log_hyperparams(config)
            logger.log_text(text, self.config_filename)

    def _config_text(self) -> tuple[str, dict[str, Any]]:
        """The YAML that is uploaded and the dict that is logged as params: the same values, secrets removed."""
        # skip_none=False, as Lightning saves it: a None that is left out would take the default on a rerun.
        text = self.parser.dump(self.config, skip_none=False)
        loaded = yaml.safe_load(text)
        data: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
        clean = _redact(data, "")
        if clean != data:
            comments = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
            header = "".join(line + "\n" for line in comments)
            text = header + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, default_flow_style=False)
        return text, clean
