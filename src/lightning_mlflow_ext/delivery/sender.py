"""One request to the store, sent until it lands: the call each kind of record needs, retries of a transient
fault with backoff, a record the store refuses reported by name while the rest goes on, and anything else
handed to the writer's halt.

Runs on the writer's worker thread only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from lightning_mlflow_ext.delivery.backoff import Backoff
from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault, classify_exception
from lightning_mlflow_ext.delivery.outage import Outage
from lightning_mlflow_ext.delivery.records import ArtifactOp, MetricPoint, Record
from lightning_mlflow_ext.delivery.transport import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")


class ArtifactSender(Protocol):
    """Applies one change to a run's artifacts (``RunArtifacts``); raises what ``faults`` classifies."""

    def apply(self, op: ArtifactOp) -> None: ...

    def abort(self) -> None:
        """Cut off an upload in flight on another thread."""


class Sender:
    """Sends the writer's requests for one run.

    ``stop`` (a park) ends a backoff; ``retry_now`` (a flush) cuts one short. A fault that is neither transient
    nor about one record goes to ``halt``, which journals what is undelivered. Refusals are kept, under
    ``progress``'s lock, until the writer's next report takes them.
    """

    def __init__(
        self,
        transport: Transport,
        run_id: str,
        artifacts: ArtifactSender | None,
        *,
        outage: Outage,
        retry_delays: tuple[float, float],
        stop: threading.Event,
        retry_now: threading.Event,
        halt: Callable[[DeliveryError, BaseException], None],
        progress: threading.Condition,
    ) -> None:
        self._transport = transport
        self._run_id = run_id
        self._artifacts = artifacts
        self._outage = outage
        self._retry_delays = retry_delays
        self._stop = stop
        self._retry_now = retry_now
        self._halt = halt
        self._progress = progress
        self._rejected = 0  # guarded by progress
        self._errors: list[str] = []  # guarded by progress
        self._reported: set[str] = set()  # the worker's own: what was warned about once

    def metrics(self, metrics: list[MetricPoint]) -> bool:
        """One ``log_batch`` of metric points; False when parked first, or when delivery halted."""
        return self._with_retries(self._send_metrics, metrics)

    def other(self, record: Record) -> bool:
        """Params, tags, a status, dataset inputs or an artifact change; False when parked first, or halted."""
        return self._with_retries(self._send_other, record)

    def take_refused(self) -> tuple[int, list[str]]:
        """Writes refused since the last call, and the messages saying why (caller holds ``progress``'s lock)."""
        refused = (self._rejected, self._errors)
        self._rejected, self._errors = 0, []
        return refused

    def _with_retries(self, send: Callable[[T], None], payload: T) -> bool:
        """Send until it lands; False when parked first, or when a run-wide fault or a bug stopped delivery
        (the in-flight and queued writes are then in the journal)."""
        backoff = Backoff(self._retry_delays, self._stop, self._retry_now)
        while True:
            try:
                send(payload)
            except Exception as raw:
                fault = classify_exception(self._transport.tracking_uri, raw)
                if fault.fault is not Fault.TRANSIENT:
                    self._halt(fault, raw)
                    return False
                self._outage.note_unreachable(fault)
                if not backoff.wait(fault):
                    return False
                continue
            self._outage.recovered()
            return True

    def _send_metrics(self, metrics: list[MetricPoint]) -> None:
        try:
            self._transport.log_batch(self._run_id, metrics=metrics)
        except DeliveryError as exc:
            if exc.fault is not Fault.ONE_RECORD:
                raise
            if len(metrics) == 1:
                self._refuse(f"metric {metrics[0][0]!r}", 1, exc)
                return
            # One bad point must not sink the others: split until the refused ones are found.
            middle = len(metrics) // 2
            self._send_metrics(metrics[:middle])
            self._send_metrics(metrics[middle:])

    def _send_other(self, record: Record) -> None:
        try:
            if record.params:
                self._transport.log_batch(self._run_id, params=record.params)
            if record.tags:
                self._transport.log_batch(self._run_id, tags=record.tags)
            if record.status:
                self._transport.set_status(self._run_id, record.status, record.end_time)
            if record.inputs:
                self._transport.log_inputs(self._run_id, record.inputs)
            if record.artifact:
                if self._artifacts is None:
                    raise DeliveryError("no artifact store to apply it to", Fault.ONE_RECORD)
                self._artifacts.apply(record.artifact)
        except DeliveryError as exc:
            if exc.fault is not Fault.ONE_RECORD:
                raise
            keys = [key for key, _ in record.params or record.tags] or [
                record.artifact.describe()
                if record.artifact
                else f"datasets {[item['context'] for item in record.inputs]}"
                if record.inputs
                else f"status {record.status}"
            ]
            self._refuse(", ".join(repr(k) for k in keys[:5]), record.size, exc)

    def _refuse(self, what: str, count: int, exc: Exception) -> None:
        message = f"MLflow refused {what} for run {self._run_id}: {exc}"
        with self._progress:
            self._rejected += count
            self._errors.append(message)
        if what not in self._reported:
            self._reported.add(what)
            log.warning(message)
