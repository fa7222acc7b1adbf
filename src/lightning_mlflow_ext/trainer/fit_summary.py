"""How a fit went, as metrics the runs table can sort: the best value of every monitored quantity and when it was
reached, the epochs and steps done, the wall time, samples/s and steps/s; recorded as the fit goes.

Names (``<m>`` is a ``monitor`` of a ModelCheckpoint or EarlyStopping): ``best/<m>``, ``best_epoch/<m>``,
``best_step/<m>``, ``best_time_s/<m>``; ``fit/epochs``, ``fit/global_step``, ``fit/wall_time_s``, ``fit/samples``,
``fit/samples_per_s``, ``fit/steps_per_s``. Not ``best/<m>/epoch``: a key that is also the folder of other keys
breaks a ``file:`` store. Every point is at the global step, at most one a step, so the runs table shows the last.

Written at every epoch end and after every validation, through the metric pipeline (queued, never sent from the
training thread). Monitored values are read from ``trainer.callback_metrics`` when Lightning has already reduced
them (after a validation, and once an epoch is over); a batch costs a few attribute reads and no device sync.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from lightning_mlflow_ext.trainer.summaries import monitored_quantities, trainer_callbacks

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.trainer.metrics import MetricPipeline
    from lightning_mlflow_ext.warn_once import WarnOnce

#: Where a fit is when the bridge tells the logger (``protocol.TrainerHooks.fit_progressed``).
FitMoment = Literal["validated", "epoch_ended", "epoch_started", "training_ended", "checkpoint"]

#: The key of this summary's state in what a Lightning checkpoint records about the run (``checkpoint_info``).
STATE_KEY = "fit_summary"

_UNKNOWN = -1  # a batch size not looked up yet


def batch_size(batch: Any) -> int | None:
    """The leading dimension of a tensor (or array) batch, or of the first one of a tuple, list or dict batch.

    A shape is metadata: reading it never waits for the device.
    """
    first = batch
    if isinstance(batch, (list, tuple)):
        first = batch[0] if batch else None
    elif isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
    shape = getattr(first, "shape", None)
    if shape:
        size = shape[0]
        return size if type(size) is int else None
    return None


@dataclass
class Best:
    """The best value a monitored quantity reached, and where: ``time_s`` is seconds from the fit's start."""

    mode: str
    value: float
    epoch: int
    step: int
    time_s: float

    def beaten_by(self, value: float) -> bool:
        return value < self.value if self.mode == "min" else value > self.value


@dataclass
class Moment:
    """Where the fit is: the epoch (Lightning's ``current_epoch``: the one running, or the one that just ended),
    epochs done, global step, seconds since the fit started, samples trained on (None: unknown)."""

    epoch: int
    epochs: int
    step: int
    time_s: float
    samples: int | None


class FitSummary:
    """The summary of one logger's fit. The bridge calls it on every rank: every rank reads the monitored values
    when Lightning's callbacks do (a read may reduce across ranks), global rank 0 alone counts and records."""

    def __init__(self, metrics: MetricPipeline, warn_once: WarnOnce) -> None:
        self._metrics = metrics
        self._warn_once = warn_once
        self._fitting = False
        self._recording = False  # global rank 0 of a fit
        self._monitors: dict[str, str] = {}
        self._best: dict[str, Best] = {}
        self._started = 0.0
        self._time_before = 0.0  # seconds the fit had run when the checkpoint it resumed from was saved
        self._samples_before: int | None = 0
        self._steps_before = 0
        self._first_step = 0  # the global step this process's fit started at
        self._samples: int | None = 0  # samples this process trained on (None: a batch of unknown size)
        self._loader_batch_size = _UNKNOWN
        self._world_size = 1
        self._epoch_end: Moment | None = None  # an epoch ended, its values not read yet
        self._validated = False  # a validation ran since the last point
        self._written_step = -1

    # ---- the fit's edges ------------------------------------------------------------------------

    def start(self, trainer: pl.Trainer) -> None:
        """A stage is set up: a fit starts its clock and counters; any other stage records nothing."""
        self._fitting = trainer.state.fn == "fit"
        self._recording = self._fitting and trainer.global_rank == 0
        self._monitors = {}
        if not self._fitting:
            return
        for monitor, mode in monitored_quantities(trainer_callbacks(trainer)):
            known = self._monitors.setdefault(monitor, mode)
            if known != mode:
                self._warn_once(
                    f"monitor-mode:{monitor}",
                    f"{monitor!r} is monitored with mode={known!r} and mode={mode!r}; best/{monitor} follows the "
                    f"first callback ({known!r}).",
                )
        self._best = {}
        self._started = time.monotonic()
        self._time_before, self._samples_before, self._steps_before = 0.0, 0, 0
        self._first_step = trainer.global_step
        self._samples = 0
        self._loader_batch_size = _UNKNOWN
        self._world_size = max(1, trainer.world_size)
        self._epoch_end = None
        self._validated = False
        self._written_step = -1

    def restore(self, state: Any, global_step: int) -> None:
        """A fit resumes from a checkpoint saved at ``global_step``: carry on from what it recorded (if anything)."""
        self._first_step = self._written_step = global_step
        if not isinstance(state, Mapping):
            return
        self._time_before = float(state.get("wall_time_s", 0.0))
        samples = state.get("samples")
        self._samples_before = int(samples) if samples is not None else None
        self._steps_before = int(state.get("steps", 0))
        for monitor, fields in state.get("best", {}).items():
            if monitor in self._monitors and fields.get("mode") == self._monitors[monitor]:
                with contextlib.suppress(KeyError, TypeError, ValueError):  # a checkpoint of another version
                    self._best[monitor] = Best(
                        fields["mode"], float(fields["value"]), int(fields["epoch"]), int(fields["step"]),
                        float(fields["time_s"]),
                    )

    def state(self, trainer: pl.Trainer | None) -> dict[str, Any] | None:
        """What a checkpoint keeps, so that a fit resumed from it continues the best values, time and counts."""
        if not self._recording or trainer is None:
            return None
        now = self._now(trainer, trainer.current_epoch)
        return {
            "wall_time_s": now.time_s,
            "samples": now.samples,
            "steps": self._steps(now.step),
            "best": {monitor: asdict(best) for monitor, best in self._best.items()},
        }

    def finish(self, trainer: pl.Trainer | None) -> None:
        """The fit ends (successfully or not): its last point, unless its step has one already."""
        if self._recording and trainer is not None:
            self._write(self._epoch_end or self._now(trainer, trainer.current_epoch))
        self._fitting = self._recording = False
        self._epoch_end = None

    # ---- during the fit -------------------------------------------------------------------------

    def batch_ended(self, trainer: pl.Trainer, batch: Any) -> None:
        """Once a training batch: count its samples; after a validation in the middle of an epoch, record."""
        if not self._recording:
            return
        if self._samples is not None:
            size = batch_size(batch)
            if size is None:
                size = self._dataloader_batch_size(trainer)
            self._samples = None if size is None else self._samples + size
        if self._validated:
            self._validated = False
            self._write(self._now(trainer, trainer.current_epoch))

    def progressed(self, trainer: pl.Trainer, moment: FitMoment) -> None:
        """The bridge's hooks: the same calls on every rank, so every rank reads when the others do."""
        if not self._fitting:
            return
        if moment == "validated":
            if not trainer.sanity_checking:
                self._read(trainer, self._now(trainer, trainer.current_epoch))
                self._validated = True
        elif moment == "epoch_ended":
            # Read once the epoch is complete (the next hook): ModelCheckpoint and EarlyStopping also see what the
            # LightningModule's on_train_epoch_end logs, which runs after this hook.
            self._epoch_end = self._now(trainer, trainer.current_epoch + 1)
        else:
            self._settle(trainer)

    def _settle(self, trainer: pl.Trainer) -> None:
        """The epoch that ended is complete: read what it logged, at the moment it ended, and record it."""
        moment = self._epoch_end
        if moment is None:
            return
        self._epoch_end = None
        self._validated = False
        self._read(trainer, moment)
        self._write(moment)

    # ---- reading and recording --------------------------------------------------------------------

    def _read(self, trainer: pl.Trainer, moment: Moment) -> None:
        if not self._monitors:
            return
        values = trainer.callback_metrics  # on every rank, as ModelCheckpoint reads it
        if not self._recording:
            return
        for monitor, mode in self._monitors.items():
            raw = values.get(monitor)
            if raw is None:
                continue
            value = float(raw)  # once an epoch, a value Lightning already reduced
            best = self._best.get(monitor)
            if math.isfinite(value) and (best is None or best.beaten_by(value)):
                self._best[monitor] = Best(mode, value, moment.epoch, moment.step, moment.time_s)

    def _now(self, trainer: pl.Trainer, epochs: int) -> Moment:
        samples = None
        if self._samples is not None and self._samples_before is not None:
            samples = self._samples_before + self._samples * self._world_size
        seconds = self._time_before + time.monotonic() - self._started
        return Moment(trainer.current_epoch, epochs, trainer.global_step, seconds, samples)

    def _dataloader_batch_size(self, trainer: pl.Trainer) -> int | None:
        if self._loader_batch_size == _UNKNOWN:
            size = getattr(trainer.train_dataloader, "batch_size", None)
            self._loader_batch_size = size if isinstance(size, int) and size > 0 else 0
        return self._loader_batch_size or None

    def _steps(self, step: int) -> int:
        return self._steps_before + step - self._first_step

    def _write(self, moment: Moment) -> None:
        if not self._recording or moment.step <= self._written_step:
            return
        self._written_step = moment.step
        seconds = moment.time_s
        steps = self._steps(moment.step)
        values: dict[str, float] = {
            "fit/epochs": float(moment.epochs),
            "fit/global_step": float(moment.step),
            "fit/wall_time_s": seconds,
        }
        if seconds > 0:
            values["fit/steps_per_s"] = steps / seconds
        if moment.samples is not None:
            values["fit/samples"] = float(moment.samples)
            if seconds > 0:
                values["fit/samples_per_s"] = moment.samples / seconds
        for monitor, best in self._best.items():
            values[f"best/{monitor}"] = best.value
            values[f"best_epoch/{monitor}"] = float(best.epoch)
            values[f"best_step/{monitor}"] = float(best.step)
            values[f"best_time_s/{monitor}"] = best.time_s
        self._metrics.log_summary(values, moment.step)
