"""Continuing a run: a fit resumed from a checkpoint, and a fit started over on the same logger.

A checkpoint names the run it was trained in (``checkpoint_info``); a fit that restores it continues that run,
from the step it was saved at. A notebook cell that fits again from scratch, or fits another model, on the
same Trainer is a new run when this logger created the last one; the same model fitted further continues it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mlflow_ext.run.tags import RESUMED_AT_STEP_TAG, RESUMED_FROM_RUN_TAG
from lightning_mlflow_ext.trainer.distributed import from_rank_zero

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)
T = TypeVar("T")


class FitHistory:
    """Which model this logger fitted last, and whether that fit ended: enough to tell a fit started over."""

    def __init__(self) -> None:
        self.fit_ended = False
        self._fitted_module: weakref.ReferenceType[pl.LightningModule] | None = None

    def starts_over(self, trainer: pl.Trainer) -> bool:
        """True for a fit from scratch, or of another model, after a fit that ended (and remember this one)."""
        if trainer.state.fn != "fit":
            return False
        fresh = False
        if self.fit_ended and trainer.ckpt_path is None:
            module = trainer.lightning_module
            if trainer.global_step == 0 or self._fitted_module is None or self._fitted_module() is not module:
                self.fit_ended = False
                fresh = True
        self._fitted_module = weakref.ref(trainer.lightning_module)
        return fresh

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fitted_module"] = None  # a weak reference does not cross processes
        return state


def start_over(session: RunSession, forget_run_state: Callable[[], None], warn_once: WarnOnce) -> None:
    """A fresh fit after a finished one: a new run if this logger created the last one, else one warning."""
    if session.origin == "created":
        session.start_new_run()
        forget_run_state()
    else:
        warn_once(
            "refit",
            f"A new fit from step 0 logs into run {session.run_id}, which already holds a fit: points at "
            "the same steps are stored twice. Create a new MLflowLogger (or end the run) for a separate run.",
        )


def continue_run(trainer: pl.Trainer, session: RunSession, info: Mapping[str, Any]) -> tuple[str, str, str]:
    """The run a restored checkpoint was trained in, looked up by rank 0 in this logger's store, adopted by
    every rank; the run the session already had when the checkpoint names none (or an older checkpoint)."""
    run_id = info.get("run_id")

    def resume() -> tuple[str, str, str]:
        if isinstance(run_id, str):
            session.resume_from_checkpoint(run_id)
        return session.identity

    identity = from_rank_zero(trainer, resume)
    session.adopt(identity, replace=True)
    return identity


def resume_tags(info: Mapping[str, Any], global_step: int, run_id: str) -> dict[str, str]:
    """Where the run was resumed, and from which run when the checkpoint came from another one."""
    tags = {RESUMED_AT_STEP_TAG: str(global_step)}
    trained_in = info.get("run_id")
    if isinstance(trained_in, str) and trained_in != run_id:
        tags[RESUMED_FROM_RUN_TAG] = trained_in
    return tags


def read_back(session: RunSession, read: Callable[[], T], fallback: T) -> T:
    """What the run holds, or ``fallback`` when the store is down: training goes on, the journal keeps what
    is sent."""
    try:
        return read()
    except Exception as exc:
        log.warning("Could not read the MLflow run %s back (%s); resuming without it.", session.run_id, exc)
        return fallback


def move_checkpoint_folders(trainer: pl.Trainer, old: str, new: str) -> None:
    """ModelCheckpoint chose its folder from the run created before the checkpoint was read: use the folder
    of the run being continued (where its top-k already are)."""
    for callback in [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]:
        dirpath = callback.dirpath
        if dirpath is not None and os.path.realpath(dirpath) == os.path.realpath(os.path.join(old, "checkpoints")):
            callback.dirpath = os.path.join(new, "checkpoints")
    with contextlib.suppress(OSError):
        os.rmdir(old)  # only if empty
