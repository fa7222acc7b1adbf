"""The bridge: a stateless callback that hands an ``MLflowLogger`` what only the Trainer knows.

Registered for every Trainer through Lightning's ``lightning.pytorch.callbacks_factory`` entry point (and
``pytorch_lightning.callbacks_factory`` for ``pytorch_lightning``'s Trainer). It talks
to the logger only through ``protocol.TrainerHooks``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.trainer.namespaces import FollowsNamespace, save_config_callback_types
from lightning_mlflow_ext.trainer.protocol import CHECKPOINT_KEY, TrainerHooks
from lightning_mlflow_ext.trainer.summaries import trainer_callbacks

log = logging.getLogger(__name__)


def _mlflow_loggers(trainer: pl.Trainer) -> list[TrainerHooks]:
    return [logger for logger in trainer.loggers if isinstance(logger, MLflowLogger)]


def saved_configs(trainer: pl.Trainer) -> list[tuple[str, list[str]]]:
    """The file each LightningCLI ``SaveConfigCallback`` writes into ``Trainer.log_dir``, and the config files
    the CLI read (``--config``)."""
    found = []
    for callback in trainer_callbacks(trainer):
        if not isinstance(callback, save_config_callback_types()) or not callback.save_to_log_dir:
            continue
        if getattr(callback, "saves_into_run_folder", False):
            continue  # MLflowSaveConfigCallback: nothing of it in save_dir
        inputs = callback.config.get("config") or []
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        found.append((str(callback.config_filename), [os.fspath(path) for path in inputs]))
    return found


def validates_once_per_epoch(trainer: pl.Trainer) -> bool:
    """True when a fit validates at most once an epoch, so step = epoch gives each point its own step."""
    if trainer.check_val_every_n_epoch is None:
        return False  # validation every N batches, across epoch boundaries
    # Lightning < 2.5 sets ``val_check_batch`` only when the fit loop sets up its data (after the sanity check).
    every: int | float | None = getattr(trainer, "val_check_batch", None)
    batches = trainer.num_training_batches
    if every is None:
        return True
    if isinstance(batches, float) and math.isinf(batches):
        # A stream of unknown length: only "validate at the end of the epoch" is once an epoch.
        return isinstance(every, float) and math.isinf(every)
    return every >= batches


def last_train_step(trainer: pl.Trainer) -> int | None:
    """The global step a fit's training will end at, from max_steps and max_epochs; None when unbounded.

    Early stopping can end it sooner: the estimate only decides when the writer starts sending smaller requests.
    """
    bounds = [trainer.max_steps] if trainer.max_steps is not None and trainer.max_steps > 0 else []
    batches = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(batches):
        per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
        bounds.append(trainer.max_epochs * per_epoch)
    return min(bounds) if bounds else None


class MLflowTrainerBridge(FollowsNamespace, Callback):
    """Tells each ``MLflowLogger`` of the Trainer which trainer it serves, when an epoch ends, how far a fit has
    come, and why a stage stopped. It holds no state and does nothing for a Trainer without an ``MLflowLogger``.

    Callbacks run their ``setup`` before ``ModelCheckpoint`` (which Lightning moves to the end), and their
    ``on_*_epoch_end`` hooks before Lightning sends the epoch-level metrics to the loggers.
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.bind_trainer(trainer)
        if stage != "fit":
            self._config_saved(trainer)

    def _config_saved(self, trainer: pl.Trainer) -> None:
        # Trainer.log_dir is the first logger's save_dir. In a fit, once the run is known: after a checkpoint
        # being resumed is read (before the sanity check or training starts).
        first = trainer.loggers[0] if trainer.loggers else None
        if isinstance(first, MLflowLogger):
            for filename, inputs in saved_configs(trainer):
                hooks: TrainerHooks = first
                hooks.config_saved(filename, inputs)

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._config_saved(trainer)

    def _mark(self, trainer: pl.Trainer, at_epoch_end: bool, epoch_axis_allowed: bool = True) -> None:
        if at_epoch_end and trainer.sanity_checking:
            return  # the sanity check logs nothing, and must not leave the flag set for the first batches
        for logger in _mlflow_loggers(trainer):
            logger.set_epoch_end(at_epoch_end, epoch_axis_allowed=epoch_axis_allowed)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = _mlflow_loggers(trainer)
        last = last_train_step(trainer) if loggers else None
        for logger in loggers:
            logger.expect_last_train_step(last)
        self._config_saved(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.fit_progressed(trainer, "training_ended")
            logger.expect_last_train_step(None)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.fit_progressed(trainer, "epoch_started")
        self._mark(trainer, False)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._mark(trainer, False)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.train_batch_ended(trainer, batch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.fit_progressed(trainer, "epoch_ended")
        self._mark(trainer, True)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.before_optimizer_step(trainer, pl_module)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, False)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        in_fit = trainer.state.fn == "fit"
        self._mark(trainer, True, epoch_axis_allowed=not in_fit or validates_once_per_epoch(trainer))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before ModelCheckpoint's on_validation_end (Lightning runs it last): a checkpoint it saves now holds
        # the best values of this validation too.
        for logger in _mlflow_loggers(trainer):
            logger.fit_progressed(trainer, "validated")
        self._mark(trainer, False)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, False)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, False)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, True)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The checkpoint names its run, so that resuming from it continues that run, and holds the fit's summary.
        loggers = _mlflow_loggers(trainer)
        for logger in loggers:
            logger.fit_progressed(trainer, "checkpoint")
        for logger in loggers:
            info = logger.checkpoint_info()
            if info is not None:
                checkpoint[CHECKPOINT_KEY] = info
                return

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning restores callbacks only when a fit resumes; this runs before ModelCheckpoint's own state.
        info = checkpoint.get(CHECKPOINT_KEY)
        for logger in _mlflow_loggers(trainer):
            logger.resume_from(trainer, info if isinstance(info, dict) else {}, int(checkpoint.get("global_step", 0)))

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        for logger in _mlflow_loggers(trainer):
            logger.note_exception(exception)
        # A fit that fails before its sanity check must not leave the config file in save_dir: the next run in
        # the same folder would refuse to start (Lightning's SaveConfigCallback finds it there).
        try:
            self._config_saved(trainer)
        except Exception as exc:  # the fit's own exception is what the user must see
            log.warning("Could not move the saved config into the MLflow run: %s", exc)
