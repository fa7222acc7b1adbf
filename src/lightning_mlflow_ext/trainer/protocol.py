"""What the bridge callback tells a logger: the one protocol between ``bridge.py`` and ``MLflowLogger``.

Lightning hands a logger only metrics and hyperparameters. Which Trainer it serves, when an epoch ends, where
training will end, how far a fit has come, which checkpoint a fit resumes from and why a stage stopped, only
callbacks see: the bridge passes them on through these methods, and nothing else of the logger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.trainer.fit_summary import FitMoment

#: The key under which a Lightning checkpoint records the run it was trained in (``checkpoint_info``).
CHECKPOINT_KEY = "lightning_mlflow_ext"


class TrainerHooks(Protocol):
    """Implemented by ``MLflowLogger``; called by ``MLflowTrainerBridge`` on every rank."""

    def bind_trainer(self, trainer: pl.Trainer) -> None:
        """A stage is set up (the bridge's ``setup``): the Trainer this logger serves, its run resolved."""

    def set_epoch_end(self, at_epoch_end: bool, *, epoch_axis_allowed: bool = True) -> None:
        """Whether the metrics logged next are epoch-level, and whether they may go at step = epoch."""

    def expect_last_train_step(self, step: int | None) -> None:
        """The global step training will end at (None: unknown, or training is over)."""

    def train_batch_ended(self, trainer: pl.Trainer, batch: Any) -> None:
        """A training batch is done (every batch: must cost next to nothing, and never wait for the device)."""

    def fit_progressed(self, trainer: pl.Trainer, moment: FitMoment) -> None:
        """A validation ended, an epoch ended or started, training ended, or a checkpoint is being saved."""

    def checkpoint_info(self) -> dict[str, Any] | None:
        """What a Lightning checkpoint records about the run (None: no run yet)."""

    def resume_from(self, trainer: pl.Trainer, info: Mapping[str, Any], global_step: int) -> None:
        """A fit restores a checkpoint that recorded ``info`` at ``global_step``: continue that run."""

    def config_saved(self, filename: str, inputs: Sequence[str]) -> None:
        """Lightning's ``SaveConfigCallback`` has written ``filename`` into ``Trainer.log_dir`` (this logger's
        ``save_dir``, as the Trainer's first logger); ``inputs`` are the config files the CLI read."""

    def before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The gradients of this step are final (unscaled, not yet clipped or applied): a chance to read them."""

    def note_exception(self, exception: BaseException) -> None:
        """The stage stops on ``exception``: the run ends FAILED, or KILLED on Ctrl-C / SIGTERM."""
