"""Background writer: turns queued metrics, params and tags into MLflow ``log_batch`` requests.

The training thread only appends to a queue; one worker thread batches and sends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

log = logging.getLogger(__name__)

#: A metric point as queued by the training thread: (key, value, timestamp in ms, step).
#: A plain tuple keeps the enqueue cost to a few hundred nanoseconds.
MetricPoint = tuple[str, float, int, int]


@dataclass
class _Work:
    """One unit of queued work, kept in arrival order so params and tags land before later metrics."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)


@dataclass
class DeliveryReport:
    """What a flush left behind: points the store refused, and why."""

    undelivered: int = 0
    errors: list[str] = field(default_factory=list)


class RunWriter:
    """Sends writes for one run, in the background unless ``synchronous``.

    Each key's points are sent in the order they were queued; nothing is sent twice.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        synchronous: bool = False,
        flush_interval: float = 2.0,
    ) -> None:
        self._client = client
        self._run_id = run_id
        self._synchronous = synchronous
        self._flush_interval = flush_interval
        self._queue: deque[_Work] = deque()
        self._queued_points = 0
        self._enqueued = 0  # sequence number of the last queued unit
        self._done = 0  # sequence number of the last unit handled (sent or reported)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._report = DeliveryReport()
        self._reported_errors: set[str] = set()
        self._thread: threading.Thread | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    # ---- training-thread side -------------------------------------------------------------

    def log_metrics(self, points: list[MetricPoint]) -> None:
        if points:
            self._submit(_Work(metrics=points), size=len(points))

    def log_params(self, params: Sequence[Param]) -> None:
        if params:
            self._submit(_Work(params=list(params)), size=len(params))

    def set_tags(self, tags: Sequence[RunTag]) -> None:
        if tags:
            self._submit(_Work(tags=list(tags)), size=len(tags))

    def _submit(self, work: _Work, size: int) -> None:
        if self._synchronous:
            self._send_units([work])
            return
        self._queue.append(work)
        self._enqueued += 1
        self._queued_points += size
        if self._thread is None:
            self._start()
        if self._queued_points >= MAX_METRICS_PER_BATCH:
            self._wake.set()

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until everything queued so far was handled; return what could not be delivered."""
        if not self._synchronous and self._thread is not None:
            target = self._enqueued
            self._wake.set()
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._cond:
                while self._done < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining if remaining is not None else 1.0)
        report, self._report = self._report, DeliveryReport()
        return report

    def close(self, timeout: float | None = None) -> DeliveryReport:
        report = self.flush(timeout)
        self._closed = True
        self._wake.set()
        return report

    # ---- worker side ----------------------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mlflow-writer-{self._run_id[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        while self._queue:
            units: list[_Work] = []
            while self._queue:
                units.append(self._queue.popleft())
            self._queued_points = 0
            self._send_units(units)
            with self._cond:
                self._done += len(units)
                self._cond.notify_all()

    def _send_units(self, units: Iterable[_Work]) -> None:
        metrics: list[Metric] = []
        for unit in units:
            # Params and tags go in requests of their own: log_batch writes params first, and one
            # rejected param would otherwise sink every metric in the request.
            for start in range(0, len(unit.params), MAX_PARAMS_TAGS_PER_BATCH):
                self._send("params", params=unit.params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
            for start in range(0, len(unit.tags), MAX_PARAMS_TAGS_PER_BATCH):
                self._send("tags", tags=unit.tags[start : start + MAX_PARAMS_TAGS_PER_BATCH])
            metrics.extend(Metric(key, value, ts, step) for key, value, ts, step in unit.metrics)
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._send("metrics", metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    def _send(
        self,
        kind: str,
        *,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        try:
            self._client.log_batch(self._run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
        except Exception as exc:  # the worker must outlive a refused batch or a broken connection
            self._record_failure(kind, len(metrics) + len(params) + len(tags), exc)

    def _record_failure(self, kind: str, count: int, exc: Exception) -> None:
        self._report.undelivered += count
        message = f"MLflow refused {count} {kind} for run {self._run_id}: {exc}"
        self._report.errors.append(message)
        cause = f"{kind}:{type(exc).__name__}:{str(exc)[:200]}"
        if cause not in self._reported_errors:
            self._reported_errors.add(cause)
            log.warning(message)
