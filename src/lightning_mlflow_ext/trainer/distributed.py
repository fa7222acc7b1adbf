"""Rank 0 resolves, every rank learns the result: the one broadcast a multi-process Trainer needs from us.

The run (and, for ``MLflowCallback``, the dataset fingerprints) is found or created once, by global rank 0;
the other ranks take its answer instead of resolving on their own, so a DDP job never makes a run per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lightning.fabric.utilities.rank_zero import rank_zero_only

from lightning_mlflow_ext.errors import LightningMLflowError

if TYPE_CHECKING:
    import lightning.pytorch as pl

T = TypeVar("T")


def is_global_rank_zero() -> bool:
    """True in the process that writes to the run (also before a Trainer has set the rank: a single process)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def from_rank_zero(trainer: pl.Trainer, compute: Callable[[], T]) -> T:
    """``compute()`` on global rank 0, its result handed to every rank. When it fails there, every rank
    raises (rank 0 the error itself) instead of the others waiting for rank 0 in the next collective."""
    outcome: tuple[bool, Any] = (True, None)
    error: Exception | None = None
    if trainer.global_rank == 0:
        try:
            outcome = (True, compute())
        except Exception as exc:
            error, outcome = exc, (False, f"{type(exc).__name__}: {exc}")
    if trainer.world_size > 1:
        outcome = trainer.strategy.broadcast(outcome, src=0)
    if error is not None:
        raise error
    ok, value = outcome
    if not ok:
        raise LightningMLflowError(f"Global rank 0 could not set up the MLflow run: {value}")
    return value  # type: ignore[no-any-return]
