"""The metric pipeline: what ``log_metrics`` turns into metric points of the run.

A logged key gets a valid MLflow name (prefixed, never merged with another), a value (tensors unwrapped,
+-inf kept with its sign, non-numbers dropped with one warning) and a step: the logged step, or the epoch for
epoch-level metrics (``step_axis="epoch"``). A resumed fit does not send again the steps the run already holds
(the resume floor), and the run's tags say which keys are on the epoch axis.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.writer import TAIL_POINTS, MetricPoint
from lightning_mlflow_ext.run.tags import EPOCH_AXIS_KEYS_TAG, MAX_TAG_VALUE, STEP_AXIS_TAG
from lightning_mlflow_ext.values.axes import EPOCH_KEY, StepAxes, StepAxis
from lightning_mlflow_ext.values.names import NameMapper, truncate_value

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.warn_once import WarnOnce

PREFIX_SEPARATOR = "-"  # Lightning's LOGGER_JOIN_CHAR, so prefixed keys match its MLFlowLogger
#: +-inf become the largest finite doubles: the sign survives every store (a server turns -inf into +max).
FLOAT_MAX = sys.float_info.max


class MetricPipeline:
    """Names, values and steps of one logger's metrics, and what it knows of the run's axes."""

    def __init__(self, session: RunSession, warn_once: WarnOnce, *, prefix: str, step_axis: StepAxis) -> None:
        self._session = session
        self._warn_once = warn_once
        self._prefix = prefix
        self._axes = StepAxes(step_axis)
        self._metric_names = NameMapper()
        self._auto_steps: dict[str, int] = {}
        self._at_epoch_end = False
        self._epoch_axis_allowed = True
        self._axis_tags_sent: tuple[str, ...] | None = None
        self._axes_seeded = False
        self._last_train_step: int | None = None  # the step a running fit is expected to end at, when known
        self._step_axis_names: dict[str, str] = {}  # logged key -> name, for keys recorded at the logged step
        self.keys_seen: set[str] = set()  # every key a caller handed this pipeline (first-time points add them)
        self._epoch_name: str | None = None  # the name Lightning's `epoch` key is recorded under, once seen
        #: key -> last step the run held when this fit resumed: points at or below it are not sent again.
        self.resume_floor: dict[str, int] = {}
        #: Told of every batch of points queued, on the training thread (a checkpoint's logged model and the best
        #: model's scores are points of the run: ``checkpoint_models``, ``checkpoint_scores``).
        self.listeners: list[Callable[[list[MetricPoint], pl.Trainer | None], None]] = []

    @property
    def step_axis(self) -> StepAxis:
        return self._axes.step_axis

    # ---- what the Trainer tells (through the bridge) ----------------------------------------------

    def set_epoch_end(self, at_epoch_end: bool, *, epoch_axis_allowed: bool = True) -> None:
        """Whether the metrics logged next are epoch-level, and whether they may go on the epoch axis."""
        self._at_epoch_end = at_epoch_end
        self._epoch_axis_allowed = epoch_axis_allowed

    def expect_last_train_step(self, step: int | None) -> None:
        """The global step this fit's training ends at (None: unknown, or training is over)."""
        self._last_train_step = step

    # ---- points ---------------------------------------------------------------------------------

    def log(
        self, metrics: Mapping[str, Any], step: int | None, trainer: pl.Trainer | None, *, epoch: int | None = None
    ) -> None:
        """``epoch``: the metrics are epoch-level values of that epoch (recorded at step = epoch on its axis)."""
        # This runs on the training thread for every logging step: keys already known to be recorded at the
        # step they are logged with (most of them) take a dict lookup, and finite floats skip any conversion.
        timestamp = int(time.time() * 1000)
        at_step = None if step is None else int(step)
        known = self._step_axis_names if epoch is None else {}
        epoch_name = self._epoch_name
        floor = self.resume_floor
        points: list[MetricPoint] = []
        for key, raw in metrics.items():
            name = None if at_step is None else known.get(key)
            if name is None and epoch_name and at_step is not None and key == EPOCH_KEY and type(raw) is int:
                # Lightning adds the current epoch to every call: one point a step.
                if self._axes.keep_epoch_point(at_step) and not (floor and at_step <= floor.get(epoch_name, -1)):
                    points.append((epoch_name, float(raw), timestamp, at_step))
                continue
            value = raw if type(raw) is float and raw - raw == 0.0 else self._metric_value(key, raw)
            if value is None:
                continue
            if name is not None and at_step is not None:
                if not floor or at_step > floor.get(name, -1):
                    points.append((name, value, timestamp, at_step))
                continue
            point = self._first_time_point(key, value, timestamp, at_step, trainer, epoch)
            if point is not None and not (floor and point[3] <= floor.get(point[0], -1)):
                points.append(point)  # (a resumed fit replays steps the run already holds: the first point stays)
        if points:
            last = self._last_train_step
            if last is not None and at_step is not None and (left := (last - at_step) * len(points)) <= TAIL_POINTS:
                self._session.stage_ends_soon(left)
            self._session.log_metrics(points)
            for listener in self.listeners:
                listener(points, trainer)

    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        """Values this package derives (the fit summary: ``trainer/fit_summary.py``), at exactly ``step``: named
        like every key (prefix, a valid name), never moved to the epoch axis; the caller sends a key at most once
        a step. A resumed fit does not send again the steps the run holds."""
        timestamp = int(time.time() * 1000)
        floor = self.resume_floor
        points: list[MetricPoint] = []
        for key, value in metrics.items():
            name = self._name(key)
            if not floor or step > floor.get(name, -1):
                points.append((name, value, timestamp, step))
        if points:
            self._session.log_metrics(points)

    def _name(self, key: str) -> str:
        """The MLflow name of a logged key: prefixed, valid, never another key's (said once when it differs)."""
        if self._prefix:
            key = f"{self._prefix}{PREFIX_SEPARATOR}{key}"
        name = self._metric_names.map(key)
        if name != key:
            self._warn_once(key, f"Metric {key!r} is not a valid MLflow name; it is recorded as {name!r}.")
        return name

    def recorded_name(self, key: str) -> str | None:
        """The run's metric name of the logged ``key``; None while no point of it was sent."""
        if key not in self.keys_seen:
            return None
        return self._metric_names.map(f"{self._prefix}{PREFIX_SEPARATOR}{key}" if self._prefix else key)

    def _first_time_point(
        self,
        logged: str,
        value: float,
        timestamp: int,
        step: int | None,
        trainer: pl.Trainer | None,
        epoch: int | None = None,
    ) -> MetricPoint | None:
        """The point for a key not (yet) known to stay on the logged step: name it, choose its axis."""
        self.keys_seen.add(logged)
        is_epoch = logged == EPOCH_KEY
        name = self._name(logged)
        point_step = step if step is not None else self._step(name, trainer)
        if is_epoch:
            self._epoch_name = name
            if not self._axes.keep_epoch_point(point_step):
                return None
        else:
            point_step = self._axes.step_for(
                name,
                epoch_level=epoch is not None or (self._at_epoch_end and self._epoch_axis_allowed),
                epoch=epoch if epoch is not None else trainer.current_epoch if trainer is not None else None,
                step=point_step,
            )
            if step is not None and self._axes.on_step_axis(name):
                self._step_axis_names[logged] = name
        return (name, value, timestamp, point_step)

    def _step(self, key: str, trainer: pl.Trainer | None) -> int:
        # step=None is not step 0: the trainer's global step, else one past this key's last point.
        if trainer is not None:
            return int(trainer.global_step)
        nxt = self._auto_steps.get(key, 0)
        self._auto_steps[key] = nxt + 1
        return nxt

    def _metric_value(self, key: str, raw: Any) -> float | None:
        value = raw
        if hasattr(value, "item") and callable(value.item):
            with contextlib.suppress(ValueError, RuntimeError):  # a tensor or array with several elements
                value = value.item()
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)):
            self._warn_once(
                f"type:{key}",
                f"Metric {key!r} has a non-numeric value of type {type(raw).__name__}; it is not logged.",
            )
            return None
        value = float(value)
        if math.isinf(value):
            self._warn_once(
                f"inf:{key}",
                f"Metric {key!r} is {value}; it is recorded as {'-' if value < 0 else ''}{FLOAT_MAX:.4g} "
                "(the largest finite value), which every MLflow store keeps with its sign.",
            )
            return math.copysign(FLOAT_MAX, value)
        return value

    # ---- the run's axes ---------------------------------------------------------------------------

    def seed_axes(self) -> None:
        """Once per run: the keys an earlier fit of this run put on the epoch axis stay there."""
        if not self._axes_seeded:
            self._axes_seeded = True
            keys = self._session.initial_tags.get(EPOCH_AXIS_KEYS_TAG, "")
            self._axes.seed([key for key in keys.split(",") if key])

    def send_axis_tags(self) -> None:
        """Tell the run (and a later resume) which axis each key is on; only when that changed."""
        keys = tuple(self._axes.epoch_keys)
        if keys == self._axis_tags_sent:
            return
        self._axis_tags_sent = keys
        tags: dict[str, str] = {STEP_AXIS_TAG: self._axes.step_axis}
        if keys:
            tags[EPOCH_AXIS_KEYS_TAG] = truncate_value(",".join(keys), MAX_TAG_VALUE)[0]
        self._session.set_tags(tags)

    def warn_repeated(self) -> None:
        """Once per set of keys: a validate()/test() run again at an epoch already recorded."""
        if self._axes.repeated:
            self._warn_once(
                "repeated:" + ",".join(sorted(self._axes.repeated)),
                f"Metrics {sorted(self._axes.repeated)} got a second point at an epoch they already had (validate() "
                "or test() run again at the same epoch); MLflow keeps both, in time order. "
                "step_axis='global_step' records them at the global step instead.",
            )

    def forget_run(self) -> None:
        """What was known of a run this logger no longer writes into (its axes, read from its tags)."""
        self._axes.reset()
        self._step_axis_names = {}
        self._epoch_name = None
        self._axes_seeded = False
        self._axis_tags_sent = None
