"""What ``trainer/autolog_compat.py`` writes under MLflow's own names, through a logger's parts.

Kept off ``MLflowLogger``'s public surface: these are the writes of one caller, not of a user's training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from lightning_mlflow_ext.run.models import logged_model_id

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.trainer.hyperparams import HyperparamRecorder
    from lightning_mlflow_ext.trainer.metrics import MetricPipeline


class CompatWrites:
    """Params another tool names too, epoch metrics logged after their epoch, and the id a model change made."""

    def __init__(self, session: RunSession, hparams: HyperparamRecorder, metrics: MetricPipeline) -> None:
        self._session = session
        self._hparams = hparams
        self._metrics = metrics
        self._own: set[str] = set()  # keys these writes logged themselves (they are "seen" too)

    @rank_zero_only
    def log_params_once(self, params: Mapping[str, Any]) -> None:
        """A name the run already holds keeps its value, silently."""
        self._hparams.log(params, keep_existing=True)

    @rank_zero_only
    def log_epoch_metrics(self, metrics: Mapping[str, Any], epoch: int, trainer: pl.Trainer | None) -> None:
        """Epoch-level values of ``epoch``, logged after it ended: at step = epoch (on the epoch axis)."""
        self._own.update(metrics)
        self._metrics.log(metrics, trainer.global_step if trainer is not None else epoch, trainer, epoch=epoch)

    def not_handed(self, values: Mapping[str, float], trainer: pl.Trainer) -> dict[str, float]:
        """The metrics among ``values`` nobody hands the logger: not in Lightning's ``logged_metrics`` (those of
        the current step or epoch end, before they are handed), and not a key another caller has handed it
        (a LearningRateMonitor logs straight to the loggers); keys these writes log themselves stay in."""
        handed, seen, own = trainer.logged_metrics, self._metrics.keys_seen, self._own
        return {k: v for k, v in values.items() if k not in handed and (k not in seen or k in own)}

    @rank_zero_only
    def log_step_metrics(self, metrics: Mapping[str, Any], step: int, trainer: pl.Trainer | None) -> None:
        """Values of the training step ``step``, at that step."""
        self._own.update(metrics)
        self._metrics.log(metrics, step, trainer)

    @property
    def created_run(self) -> bool:
        """True when the logger created its run (not the active run, a run id, a checkpoint's run)."""
        return self._session.resolved and self._session.origin == "created"

    def logged_model_id(self, change_id: str) -> str | None:
        """The id of the logged model the change ``change_id`` made, once the store has it."""
        return logged_model_id(self._session.client, self._session.experiment_id, change_id)
