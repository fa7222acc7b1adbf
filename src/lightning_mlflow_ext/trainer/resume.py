"""Which run a logger writes into from stage to stage: resumed from a checkpoint, or started over.

At every stage's setup global rank 0 resolves the run and every rank learns it (``distributed``). A checkpoint
names the run it was trained in (``checkpoint_info``); a fit that restores it continues that run, from the step
it was saved at, without sending again the steps the run holds. A notebook cell that fits again from scratch,
or fits another model, on the same Trainer is a new run when this logger created the last one; the same model
fitted further continues it. A copy of the logger in another process (ddp_spawn) is a kind of resume too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from lightning_mlflow_ext.run.tags import RESUMED_AT_STEP_TAG, RESUMED_FROM_RUN_TAG
from lightning_mlflow_ext.trainer.distributed import from_rank_zero
from lightning_mlflow_ext.trainer.namespaces import model_checkpoint_types

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.trainer.hyperparams import HyperparamRecorder
    from lightning_mlflow_ext.trainer.media import MediaRecorder
    from lightning_mlflow_ext.trainer.metrics import MetricPipeline
    from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunContinuity:
    """The run of one logger across stages, fits and processes; what the parts must forget when it changes."""

    def __init__(
        self,
        session: RunSession,
        metrics: MetricPipeline,
        hparams: HyperparamRecorder,
        media: MediaRecorder,
        warn_once: WarnOnce,
        save_dir: str,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._hparams = hparams
        self._media = media
        self._warn_once = warn_once
        self._save_dir = save_dir
        self._fit_ended = False
        self._fitted_module: weakref.ReferenceType[pl.LightningModule] | None = None
        self._unpickled = False  # a copy in another process (ddp_spawn): the run may hold points it never saw

    # ---- a fit started over (a notebook cell run again) -----------------------------------------

    def note_fit(self, trainer: pl.Trainer) -> None:
        """At setup: a fit from scratch, or of another model, after a fit that ended starts over."""
        if trainer.state.fn == "fit" and self._fit_ended and trainer.ckpt_path is None:
            # A new fit from scratch, or of another model (a notebook cell fixed and the fit cell run again on
            # the same Trainer); the same model fitted further on the same Trainer continues the run.
            module = trainer.lightning_module
            if trainer.global_step == 0 or self._fitted_module is None or self._fitted_module() is not module:
                self._start_over()
        if trainer.state.fn == "fit":
            self._fitted_module = weakref.ref(trainer.lightning_module)

    def fit_ended(self) -> None:
        """The fit is over: a later fit either continues the run (same model) or starts over."""
        self._fit_ended = True
        self._metrics.resume_floor = {}

    def _start_over(self) -> None:
        """A fresh fit after a finished one: a new run if this logger created the last one, else one warning."""
        self._fit_ended = False
        if self._session.origin == "created":
            self._session.start_new_run()
            self._forget_run_state()
        else:
            self._warn_once(
                "refit",
                f"A new fit from step 0 logs into run {self._session.run_id}, which already holds a fit: points at "
                "the same steps are stored twice. Create a new MLflowLogger (or end the run) for a separate run.",
            )

    # ---- every stage --------------------------------------------------------------------------

    def enter_stage(self, trainer: pl.Trainer) -> None:
        """Rank 0 resolves the run; every other rank takes its identity instead of resolving on its own."""
        self._session.adopt(from_rank_zero(trainer, lambda: self._session.identity), replace=True)
        if trainer.global_rank == 0:
            self._begin_stage(trainer)

    def _begin_stage(self, trainer: pl.Trainer) -> None:
        self._session.ensure_running()
        if self._unpickled:
            # A ddp_spawn worker starts from the trainer state of the main process (global step 0 for a test()
            # after a spawned fit): what the run holds at the steps it replays is not sent again.
            self._unpickled = False
            self._metrics.resume_floor = self._from_store(self._session.metric_steps, {})
        if trainer.state.fn == "fit":
            self._session.begin_fit()
        self._metrics.seed_axes()
        self._metrics.send_axis_tags()

    # ---- a fit resumed from a checkpoint --------------------------------------------------------

    def resume_from(self, trainer: pl.Trainer, info: Mapping[str, Any], global_step: int) -> None:
        """A fit restores a checkpoint: continue the run it was trained in, from the step it was saved at."""
        if trainer.state.fn != "fit":
            return
        before = self._session.identity if self._session.resolved else None
        run_id = info.get("run_id")

        def resume() -> tuple[str, str, str]:
            if isinstance(run_id, str):
                self._session.resume_from_checkpoint(run_id)  # looked up in this logger's store
            return self._session.identity

        identity = from_rank_zero(trainer, resume)
        self._session.adopt(identity, replace=True)
        if before is not None and before[0] != identity[0]:
            self._move_checkpoint_folders(trainer, before)
            self._forget_run_state()
        if trainer.global_rank != 0:
            return
        self._begin_stage(trainer)
        self._metrics.resume_floor = self._from_store(self._session.metric_steps, {})
        tags = {RESUMED_AT_STEP_TAG: str(global_step)}
        if isinstance(run_id, str) and run_id != identity[0]:
            tags[RESUMED_FROM_RUN_TAG] = run_id
        self._session.set_tags(tags)

    def _from_store(self, read: Callable[[], T], fallback: T) -> T:
        try:
            return read()
        except Exception as exc:  # the store is down: training goes on, the journal keeps what is sent
            log.warning("Could not read the MLflow run %s back (%s); resuming without it.", self._session.run_id, exc)
            return fallback

    def _move_checkpoint_folders(self, trainer: pl.Trainer, before: tuple[str, str, str]) -> None:
        """ModelCheckpoint chose its folder from the run created before the checkpoint was read: use the folder
        of the run being continued (where its top-k already are)."""
        old = os.path.join(self._save_dir, before[2], before[0])
        new = os.path.join(self._save_dir, self._session.experiment_name, self._session.run_id)
        for callback in [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, model_checkpoint_types())]:
            dirpath = callback.dirpath
            if dirpath is not None and os.path.realpath(dirpath) == os.path.realpath(os.path.join(old, "checkpoints")):
                callback.dirpath = os.path.join(new, "checkpoints")
        with contextlib.suppress(OSError):
            os.rmdir(old)  # only if empty

    def _forget_run_state(self) -> None:
        """What this logger knew of a run it no longer writes into (axes read from its tags, changed params)."""
        self._metrics.forget_run()
        self._hparams.forget_run()
        self._media.forget_run()

    # ---- a copy in another process ----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fitted_module"] = None  # a weak reference does not cross processes
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._unpickled = True
