"""How many writes go in one request: MLflow's limits per request, and smaller requests near a stage's end.

Every cut of records into requests is made here: a record too large for one request (``split``), a request's
worth taken off a queue (``take_points``), and the request size itself (``batch_points``).
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from lightning_mlflow_ext.delivery.records import Record

T = TypeVar("T")

#: Near a stage's known end, points go in requests of at most this many instead of 1000, shrinking to
#: TAIL_MIN_BATCH as the end nears: the drain at the end of the stage then waits for the server to take a few
#: dozen points, not a whole batch.
TAIL_BATCH = 200
#: The smallest tail request: below about 40 points a request costs the server more time than the training
#: loop takes to log them, and the writer would fall behind.
TAIL_MIN_BATCH = 50
#: How close to its end (in points still to come) a stage switches to tail batches: one full request's worth.
TAIL_POINTS = MAX_METRICS_PER_BATCH


def tail_batch(points_left: int) -> int:
    """The request size for a stage that ends after about ``points_left`` more points: a quarter of what is
    left, between TAIL_MIN_BATCH and TAIL_BATCH."""
    return max(TAIL_MIN_BATCH, min(TAIL_BATCH, points_left // 4))


def batch_points(tail: int) -> int:
    """Points per metrics request: the tail batch size while a stage ends (``tail``; 0 outside a tail), else
    as many as MLflow takes in one request."""
    return tail or MAX_METRICS_PER_BATCH


def split(record: Record) -> list[Record]:
    """Records small enough for one request each (MLflow: 1000 metrics, 100 params+tags)."""
    if record.size <= MAX_PARAMS_TAGS_PER_BATCH and not (record.params and record.metrics):
        return [record]
    parts = [Record(params=chunk) for chunk in _chunks(record.params, MAX_PARAMS_TAGS_PER_BATCH)]
    parts += [Record(tags=chunk) for chunk in _chunks(record.tags, MAX_PARAMS_TAGS_PER_BATCH)]
    parts += [Record(metrics=chunk) for chunk in _chunks(record.metrics, MAX_METRICS_PER_BATCH)]
    if record.status:
        parts.append(Record(status=record.status, end_time=record.end_time))
    if record.artifact:
        parts.append(Record(artifact=record.artifact))
    if record.inputs:
        parts.append(Record(inputs=record.inputs))
    return parts


def take_points(records: deque[Record], points: int, *, metrics_only: bool = False) -> list[Record]:
    """Records off the front of ``records`` holding ``points`` points, or all there are if fewer: a metrics
    record that would overflow is cut, its rest left in front. ``metrics_only``: stop at the first record that
    is not metric points (one request carries one kind)."""
    taken: list[Record] = []
    while records and points > 0:
        record = records[0]
        if metrics_only and not record.metrics:
            break
        records.popleft()
        if record.metrics and len(record.metrics) > points:  # fill the request to the brim; the rest leads the next
            records.appendleft(Record(metrics=record.metrics[points:]))
            record = Record(metrics=record.metrics[:points])
        taken.append(record)
        points -= record.size
    return taken


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
