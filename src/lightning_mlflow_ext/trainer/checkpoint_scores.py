"""The scores of each ModelCheckpoint's best checkpoint, as the run's own metric points: what a logged model of
that checkpoint gets linked to it (``get_logged_model(id).metrics``).

When a callback saves the file that becomes its best, the values Lightning judged it by (``callback_metrics``)
are matched to the points the metric pipeline sent the run under the same names and values. Linking those very
points (same timestamp and step) adds nothing to the run's history. A value not sent yet (a checkpoint saved at
the end of a training epoch, before Lightning hands the logger that epoch's values) is matched to the next point
of its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.records import MetricPoint
from lightning_mlflow_ext.trainer.checkpoint_files import last_saved_file
from lightning_mlflow_ext.trainer.metrics import FLOAT_MAX

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint


def _same(logged: float, sent: float) -> bool:
    """Whether ``sent`` is the pipeline's point of the logged value (+-inf are sent as the largest finite)."""
    if math.isnan(logged):
        return math.isnan(sent)
    return sent == (math.copysign(FLOAT_MAX, logged) if math.isinf(logged) else logged)


@dataclass
class _BestFile:
    path: str
    points: dict[str, MetricPoint] = field(default_factory=dict)  # name -> the run's point
    waiting: dict[str, float] = field(default_factory=dict)  # logged key -> value not sent yet


class CheckpointScores:
    """Watches the points a logger sends and the checkpoints it is told of; ``scores`` of a best checkpoint.

    ``recorded_name``: the run's metric name of a key Lightning logged (None when never sent).
    """

    def __init__(self, recorded_name: Callable[[str], str | None]) -> None:
        self._recorded_name = recorded_name
        self._latest: dict[str, MetricPoint] = {}  # name -> the last point sent under it
        self._best: dict[str, _BestFile] = {}  # callback state key -> its best file
        self._waiting = False  # some best file waits for a point: checked on every send

    def start_fit(self) -> None:
        """A new fit (maybe into another run): nothing of an earlier one is linked."""
        self._latest.clear()
        self._best.clear()
        self._waiting = False

    def points_sent(self, points: list[MetricPoint], trainer: pl.Trainer | None = None) -> None:
        """The metric pipeline queued ``points`` for the run (called on the training thread, every time)."""
        latest = self._latest
        for point in points:
            latest[point[0]] = point
        if self._waiting:
            self._take_waiting(points)

    def checkpoint_saved(self, callback: ModelCheckpoint, metrics: Mapping[str, Any]) -> None:
        """``callback`` saved a file, judged by ``metrics`` (the trainer's ``callback_metrics``)."""
        path = last_saved_file(callback)
        if path is None or path != callback.best_model_path:
            return  # not its best (a top-k file, last.ckpt): its scores are not wanted
        best = _BestFile(path)
        for key, raw in metrics.items():
            value = _scalar(raw)
            if value is None:
                continue
            name = self._recorded_name(key)
            sent = self._latest.get(name) if name is not None else None
            if name is not None and sent is not None and _same(value, sent[1]):
                best.points[name] = sent
            else:
                best.waiting[key] = value  # the next point of its name, if it has this value
        self._best[callback.state_key] = best
        self._waiting = any(file.waiting for file in self._best.values())

    def scores(self, callback: ModelCheckpoint) -> list[MetricPoint]:
        """The run's points the callback's best checkpoint was saved with; empty when this fit did not save it
        (a resumed fit whose best file is older)."""
        best = self._best.get(callback.state_key)
        if best is None or best.path != callback.best_model_path:
            return []
        return sorted(best.points.values())

    def _take_waiting(self, points: list[MetricPoint]) -> None:
        sent = {point[0]: point for point in points}
        for best in self._best.values():
            for key in list(best.waiting):
                name = self._recorded_name(key)
                point = sent.get(name) if name is not None else None
                if point is None:
                    continue  # not sent yet; one never sent (logged with logger=False) waits in vain, harmlessly
                if _same(best.waiting.pop(key), point[1]):
                    best.points[point[0]] = point
        self._waiting = any(file.waiting for file in self._best.values())


def _scalar(raw: Any) -> float | None:
    if getattr(raw, "numel", lambda: 1)() != 1:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None
