"""What ``mlflow.pytorch.autolog()`` records for a fit, under its names and in its places, next to this
package's own richer names: a script moved from MLflow's autolog keeps its searches, dashboards and notebooks.

``MLflowAutologCompat`` is the callback ``autolog()`` adds (switched off with ``autolog(mlflow_compat=False)``):

* params ``epochs``, ``optimizer_name`` and the first optimizer's defaults (``lr``, ``momentum``, ...), and
  EarlyStopping's ``monitor``, ``mode``, ``patience``, ``min_delta`` (as EarlyStopping holds it: negated for
  ``mode="min"``), ``stopped_epoch``; a name the run already holds (your own hyperparameter) keeps its value;
* metrics: what Lightning keeps in ``callback_metrics`` but never hands a logger (the plain name of a metric
  logged ``on_step`` and ``on_epoch``, metrics logged with ``logger=False``) at step = epoch, every
  ``log_every_n_epoch`` epochs; EarlyStopping's ``stopped_epoch``, ``restored_epoch``, ``best_score``,
  ``wait_count`` at step 0 when it stopped the fit;
* tags ``Mode`` (training / testing), and on a run autolog created ``mlflow.autologging=pytorch`` and
  ``extra_tags``;
* the trained model as the logged model ``model`` (with the signature of the first batch, registered under
  ``registered_model_name``), ``restored_model_checkpoint/`` after an early stop, MLflow's checkpoints
  (``autolog_checkpoints``);
* ``mlflow.last_logged_model()`` returns this fit's model (``last_active_run()`` its run: ``autolog``).

Inert next to ``mlflow.pytorch.autolog()`` itself (which records its names), but for the metrics: this package
mutes that callback's metrics (``coexist``), so they are recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlflow_ext.run.fluent import note_last_logged_model
from lightning_mlflow_ext.trainer.autolog_checkpoints import AutologCheckpoints, SaveFreq
from lightning_mlflow_ext.trainer.coexist import MLFLOW_AUTOLOG_CALLBACK
from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.trainer.summaries import is_early_stopping, trainer_callbacks

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

#: ``mlflow.utils.mlflow_tags.MLFLOW_AUTOLOGGING`` and the value MLflow's PyTorch autolog gives it.
AUTOLOGGING_TAG = "mlflow.autologging"
AUTOLOGGING_FLAVOR = "pytorch"
#: Early-stopping settings as ``mlflow.pytorch.autolog`` names them (params), and its outcome (metrics).
_EARLY_STOP_PARAMS = ("monitor", "mode", "patience", "min_delta", "stopped_epoch")
#: How long the end of a fit waits for the store to make the trained model (for ``mlflow.last_logged_model()``).
MODEL_WAIT_S = 60.0


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if getattr(value, "numel", lambda: 1)() == 1}


def mlflow_params(trainer: pl.Trainer) -> dict[str, str]:
    """``epochs``, ``optimizer_name`` and the first optimizer's defaults, rendered as MLflow renders them."""
    params: dict[str, Any] = {"epochs": trainer.max_epochs}
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        inner = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the user's
        params["optimizer_name"] = type(inner).__name__
        params.update(getattr(inner, "defaults", {}))
    early = next((cb for cb in trainer_callbacks(trainer) if is_early_stopping(cb)), None)
    if early is not None:
        params.update({key: getattr(early, key) for key in _EARLY_STOP_PARAMS if hasattr(early, key)})
    return {key: str(value) for key, value in params.items()}


def early_stop_metrics(callbacks: list[Any]) -> dict[str, float]:
    """What ``mlflow.pytorch.autolog`` records when an EarlyStopping stopped the fit (nothing otherwise)."""
    early = next((cb for cb in callbacks if is_early_stopping(cb)), None)
    stopped = int(getattr(early, "stopped_epoch", 0) or 0)
    if early is None or stopped == 0:
        return {}
    metrics = {"stopped_epoch": float(stopped), "restored_epoch": float(stopped - max(1, int(early.patience)))}
    if getattr(early, "best_score", None) is not None:
        metrics["best_score"] = float(early.best_score)
    if hasattr(early, "wait_count"):
        metrics["wait_count"] = float(early.wait_count)
    return metrics


class _FirstForward:
    """Keeps the first ``(input, output)`` of the module's ``forward`` (one tensor each): the model's signature."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.example: tuple[Any, Any] | None = None
        self._module = module
        self._original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            result = self._original(*args, **kwargs)
            self.remove()
            import torch

            if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor):
                self.example = (args[0].detach().cpu().clone(), result.detach().cpu().clone())
            return result

        module.forward = forward  # type: ignore[method-assign]  # this instance only, until its first call

    def remove(self) -> None:
        self._module.__dict__.pop("forward", None)


class MLflowAutologCompat(Callback):
    """The ``mlflow.pytorch.autolog()`` names and places, recorded into the run of the Trainer's
    ``MLflowLogger`` (see the module's docstring). The options mean what they mean there."""

    def __init__(
        self,
        *,
        log_every_n_epoch: int = 1,
        log_every_n_step: int | None = None,
        log_models: bool = True,
        log_model_signatures: bool = True,
        registered_model_name: str | None = None,
        extra_tags: Mapping[str, Any] | None = None,
        checkpoint: bool = True,
        checkpoint_monitor: str | None = "val_loss",
        checkpoint_mode: str = "min",
        checkpoint_save_best_only: bool = True,
        checkpoint_save_weights_only: bool = False,
        checkpoint_save_freq: SaveFreq = "epoch",
    ) -> None:
        if not (isinstance(log_every_n_epoch, int) and log_every_n_epoch > 0):
            raise ValueError(f"log_every_n_epoch must be a positive integer, got {log_every_n_epoch!r}")
        if log_every_n_step is not None and not (isinstance(log_every_n_step, int) and log_every_n_step > 0):
            raise ValueError(f"log_every_n_step must be None or a positive integer, got {log_every_n_step!r}")
        if extra_tags is not None and not isinstance(extra_tags, Mapping):
            raise TypeError(f"extra_tags must be a dict of tag names to values, got {type(extra_tags).__name__}")
        self.log_every_n_epoch = log_every_n_epoch
        self.log_every_n_step = log_every_n_step
        self.log_models = log_models
        self.log_model_signatures = log_model_signatures
        self.registered_model_name = registered_model_name
        self.extra_tags = {k: v for k, v in (extra_tags or {}).items() if k != AUTOLOGGING_TAG}
        self.checkpoints = (
            AutologCheckpoints(
                checkpoint_monitor,
                checkpoint_mode,
                checkpoint_save_best_only,
                checkpoint_save_weights_only,
                checkpoint_save_freq,
            )
            if checkpoint
            else None
        )
        self._logger: MLflowLogger | None = None
        self._mlflow_autolog_on = False
        self._epoch_keys: set[str] = set()  # recorded at epoch ends: never also at steps (as MLflow's autolog)
        self._first_forward: _FirstForward | None = None
        self._model_change: str | None = None

    # ---- the start of a fit ------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._logger = None
        self._model_change = None
        self._epoch_keys = set()
        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)), None)
        if logger is None or trainer.global_rank != 0:
            return
        self._logger = logger
        self._mlflow_autolog_on = any(type(cb).__name__ == MLFLOW_AUTOLOG_CALLBACK for cb in trainer_callbacks(trainer))
        if self._mlflow_autolog_on:
            return  # MLflow's own autolog records its params, tags, model and checkpoints
        logger.mlflow_names.log_params_once(mlflow_params(trainer))
        tags: dict[str, Any] = {"Mode": "training"}
        if logger.mlflow_names.created_run:
            tags.update({AUTOLOGGING_TAG: AUTOLOGGING_FLAVOR, **self.extra_tags})
        logger.set_tags(tags)
        if self.checkpoints is not None:
            self.checkpoints.reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the sanity check, as MLflow's autolog: the signature is that of a training batch.
        if self._logger is not None and not self._mlflow_autolog_on and self.log_models and self.log_model_signatures:
            self._first_forward = _FirstForward(pl_module)

    # ---- metrics Lightning hands no logger ------------------------------------------------------------

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger
        if logger is None:
            return
        values = _scalars(trainer.callback_metrics)
        self._epoch_keys.update(values)
        if (trainer.current_epoch + 1) % self.log_every_n_epoch == 0:
            extra = logger.mlflow_names.not_handed(values, trainer)
            if extra:
                logger.mlflow_names.log_epoch_metrics(extra, trainer.current_epoch, trainer)
        if self.checkpoints is not None and not self._mlflow_autolog_on:
            self.checkpoints.on_epoch(trainer, logger)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logger = self._logger
        if logger is None:
            return
        every, step = self.log_every_n_step, trainer.global_step
        if every and ((step // max(1, len(trainer.optimizers))) + 1) % every == 0:
            metrics = _scalars(trainer.callback_metrics)
            skip = self._epoch_keys  # as MLflow's autolog: a key recorded at epoch ends is not recorded at steps
            wanted = {k: v for k, v in metrics.items() if k not in skip and f"{k}_step" not in metrics}
            extra = logger.mlflow_names.not_handed(wanted, trainer)
            if extra:
                logger.mlflow_names.log_step_metrics(extra, step, trainer)
        if self.checkpoints is not None and not self._mlflow_autolog_on:
            self.checkpoints.on_step(trainer, logger)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger
        first, self._first_forward = self._first_forward, None
        if first is not None:
            first.remove()
        if logger is None or self._mlflow_autolog_on:
            return
        callbacks = trainer_callbacks(trainer)
        stopped = early_stop_metrics(callbacks)
        if stopped:
            # At step 0, as MLflow's autolog logs metrics without a step.
            logger.mlflow_names.log_epoch_metrics(stopped, 0, trainer)
        if not self.log_models:
            return
        try:
            self._model_change = logger.log_model(
                pl_module,
                "model",
                example=first.example if first is not None else None,
                registered_model_name=self.registered_model_name,
            )
        except Exception as exc:  # the fit succeeded; a model that could not be saved must not undo that
            log.warning("Could not save the trained model as an MLflow Model: %s", exc)
        best = getattr(trainer.checkpoint_callback, "best_model_path", None)
        if stopped and best:
            logger.log_artifact(best, "restored_model_checkpoint")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger, change = self._logger, self._model_change
        if stage != "fit" or logger is None:
            return
        if change is not None:
            self._model_change = None
            logger.flush(MODEL_WAIT_S)  # the model is made by the run's delivery: its id is known once the store has it
            model_id = logger.mlflow_names.logged_model_id(change)
            if model_id is not None:
                note_last_logged_model(model_id)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)), None)
        if logger is not None and trainer.global_rank == 0:
            logger.set_tags({"Mode": "testing"})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_first_forward"] = None  # holds a function of the module's: set again where the fit runs
        return state
