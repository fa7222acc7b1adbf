"""Background writer: turns queued metrics, params, tags and status changes into batched requests.

The training thread only appends to a bounded queue; one worker thread batches, sends, retries, and keeps
what it cannot deliver in the run's on-disk journal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from lightning_mlflow_ext.delivery.backoff import Backoff
from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault, classify_exception
from lightning_mlflow_ext.delivery.journal import ArtifactOp, Journal, Record
from lightning_mlflow_ext.delivery.transport import KeyValue, MetricPoint, Transport
from lightning_mlflow_ext.errors import WriteRefusedError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["DeliveryReport", "MetricPoint", "RunWriter"]

#: Near a stage's known end, points go in requests of at most this many instead of 1000, shrinking to
#: TAIL_MIN_BATCH as the end nears: the drain at the end of the stage then waits for the server to take a few
#: dozen points, not a whole batch.
TAIL_BATCH = 200
#: The smallest tail request: below about 40 points a request costs the server more time than the training
#: loop takes to log them, and the writer would fall behind.
TAIL_MIN_BATCH = 50
#: How close to its end (in points still to come) a stage switches to tail batches: one full request's worth.
TAIL_POINTS = MAX_METRICS_PER_BATCH


#: At exit, how long a store that refuses writes is waited for before what is left goes to the journal.
AT_EXIT_PATIENCE_S = 2.0

#: How long the store may refuse writes (transient faults) before the user is warned.
UNREACHABLE_WARN_S = 5.0

#: How often a run whose delivery stopped for a run-wide fault (refused credentials, a deleted run) is tried
#: again, with the credentials read anew: a renewed token or password resumes delivery without a restart.
HALTED_RETRY_S = 30.0


@dataclass
class DeliveryReport:
    """What is not in the store yet: refused writes (and why), writes still pending delivery, where they are
    kept, and why delivery stopped (a run-wide fault or a bug), if it did."""

    rejected: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    #: The journal file holding undelivered writes; set only when that file exists.
    journal: str | None = None
    #: Why delivery stopped and what to do, when a run-wide fault or a bug stopped it.
    halted: str | None = None
    #: Points that could be neither delivered nor written to the journal (an unwritable save_dir).
    lost: int = 0

    def undelivered_message(self, run_id: str) -> str | None:
        """One message for what did not reach the store, naming the journal only when it exists."""
        if not self.pending and not self.lost:
            return None
        parts = [f"MLflow run {run_id}: {self.pending} writes are not delivered"]
        if self.halted:
            parts.append(f" ({self.halted})")
        if self.journal:
            parts.append(f". They are kept in {self.journal}; deliver them with: lightning-mlflow sync {self.journal}")
        if self.lost:
            parts.append(f". {self.lost} could not be written to the journal either and are lost")
        return "".join(parts)


def split(record: Record) -> list[Record]:
    """Records small enough for one request each (MLflow: 1000 metrics, 100 params+tags)."""
    if record.size <= MAX_PARAMS_TAGS_PER_BATCH and not (record.params and record.metrics):
        return [record]
    parts: list[Record] = []
    for start in range(0, len(record.params), MAX_PARAMS_TAGS_PER_BATCH):
        parts.append(Record(params=record.params[start : start + MAX_PARAMS_TAGS_PER_BATCH]))
    for start in range(0, len(record.tags), MAX_PARAMS_TAGS_PER_BATCH):
        parts.append(Record(tags=record.tags[start : start + MAX_PARAMS_TAGS_PER_BATCH]))
    for start in range(0, len(record.metrics), MAX_METRICS_PER_BATCH):
        parts.append(Record(metrics=record.metrics[start : start + MAX_METRICS_PER_BATCH]))
    if record.status:
        parts.append(Record(status=record.status, end_time=record.end_time))
    if record.artifact:
        parts.append(Record(artifact=record.artifact))
    if record.inputs:
        parts.append(Record(inputs=record.inputs))
    return parts


class ArtifactSender(Protocol):
    """Applies one change to a run's artifacts (``RunArtifacts``); raises what ``faults`` classifies."""

    def apply(self, op: ArtifactOp) -> None: ...

    def abort(self) -> None:
        """Cut off an upload in flight on another thread."""


class RunWriter:
    """Delivers one run's writes in order; nothing is dropped silently and nothing is sent twice.

    Memory holds at most ``max_queued_points``; past that, new writes go to the journal until the worker
    has caught up. A transient failure (server down, 5xx, timeout, locked database) is retried with
    backoff; a permanent one (a name the store refuses) is reported once and the rest still delivered.
    """

    def __init__(
        self,
        transport: Transport,
        run_id: str,
        journal: Journal,
        *,
        synchronous: bool = False,
        synchronous_timeout: float = 60.0,
        flush_interval: float = 1.0,
        max_queued_points: int = 250_000,
        retry_delays: tuple[float, float] = (0.25, 10.0),
        heartbeat: Callable[[], list[KeyValue]] | None = None,
        heartbeat_interval: float = 60.0,
        artifacts: ArtifactSender | None = None,
    ) -> None:
        self._transport = transport
        self._artifacts = artifacts
        self._run_id = run_id
        self._journal = journal
        self._synchronous = synchronous
        self._synchronous_timeout = synchronous_timeout
        self._flush_interval = flush_interval
        self._max_queued = max_queued_points
        self._retry_delays = retry_delays
        self._lock = threading.Lock()
        self._queue: deque[Record] = deque()
        self._queued_points = 0
        self._spilling = journal.pending > 0  # writes already journaled are older than anything new
        self._inflight: deque[Record] = deque()
        self._inflight_from_journal = False
        self._handed_over_seen = 0  # of the journal's handed_over_points, what _done already counts
        self._sending: list[Record] = []  # the metrics request being sent (taken off _inflight)
        # Progress is counted in points (a status change counts one), which splitting a record preserves.
        self._enqueued = journal.pending_points() if journal.pending else 0
        self._done = 0
        self._flush_target = 0  # a flush() waits until _done reaches this
        self._progress = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._park = threading.Event()
        self._report = DeliveryReport()
        self._reported: set[str] = set()
        self._unreachable_since: float | None = None
        self._warned_unreachable = False
        self._retry_now = threading.Event()  # set by a flush or a park: cut a transient backoff short
        #: Set when a run-wide fault or a bug stopped delivery; everything undelivered is then in the journal.
        self._halted: DeliveryError | None = None
        self._halt_attempts = 0
        self._halted_tried_at = -math.inf  # when a halted run was last tried again
        self._thread: threading.Thread | None = None
        # Tags renewed every heartbeat_interval while the run is RUNNING (not after a final status).
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._next_beat = time.monotonic() + heartbeat_interval
        self._beating = True
        self._tail_batch = 0  # 0: not in a stage's tail
        if self._spilling:
            self._start()

    @property
    def journal_path(self) -> str:
        return str(self._journal.path)

    # ---- training-thread side ---------------------------------------------------------------

    def log_metrics(self, points: list[MetricPoint]) -> None:
        if points:
            self._submit(Record(metrics=points))

    def log_params(self, params: list[KeyValue]) -> None:
        if params:
            self._submit(Record(params=params))

    def set_tags(self, tags: list[KeyValue]) -> None:
        if tags:
            self._submit(Record(tags=tags))

    def log_inputs(self, inputs: list[dict[str, str]]) -> None:
        if inputs:
            self._submit(Record(inputs=inputs))

    def change_artifacts(self, ops: list[ArtifactOp]) -> None:
        """Queue artifact changes behind everything queued so far (uploads the uploader could not make)."""
        for op in ops:
            self._submit(Record(artifact=op), wait=False)

    def set_status(self, status: str, end_time: int | None = None) -> None:
        self._beating = status == "RUNNING"
        self._tail_batch = 0
        self._submit(Record(status=status, end_time=end_time))

    def set_heartbeat(self, on: bool) -> None:
        """Renew the heartbeat tags while this process works in the run (a stage), not after."""
        self._beating = on
        self._tail_batch = 0

    def begin_tail(self, points_left: int) -> None:
        """The stage ends after about ``points_left`` more points: send in smaller requests from now on (a
        quarter of what is left, between TAIL_MIN_BATCH and TAIL_BATCH), until its final status or heartbeat."""
        batch = max(TAIL_MIN_BATCH, min(TAIL_BATCH, points_left // 4))
        if batch != self._tail_batch:
            wake = not self._tail_batch
            self._tail_batch = batch
            if wake:
                self._wake.set()

    def _batch_points(self) -> int:
        return self._tail_batch or MAX_METRICS_PER_BATCH

    def _submit(self, record: Record, *, wait: bool = True) -> None:
        size = record.size
        with self._lock:
            self._enqueued += size
            if self._spilling or self._queued_points + size > self._max_queued:
                # The store is slower than the loop: keep memory bounded, let the disk hold the rest.
                self._spilling = True
                self._to_journal(self._journal.append, [record])
            else:
                self._queue.append(record)
                self._queued_points += size
            full = self._queued_points >= self._batch_points()
            if (self._thread is None or not self._thread.is_alive()) and not self._stopped_by_bug:
                self._start()
                full = False
        if full or self._synchronous:
            self._wake.set()
        if self._synchronous and wait:
            self._wait_synchronously()

    def _wait_synchronously(self) -> None:
        report = self.flush(self._synchronous_timeout)
        if report.errors:
            raise WriteRefusedError("; ".join(report.errors))

    # ---- waiting --------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None, *, unless_unreachable: bool = False) -> DeliveryReport:
        """Wait until everything queued so far is delivered or refused, at most ``timeout`` seconds.

        ``unless_unreachable``: stop waiting as soon as the store is known to be unreachable (at exit).
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        with self._lock:
            target = self._enqueued
            self._flush_target = max(self._flush_target, target)
            if (
                self._done < target
                and (self._thread is None or not self._thread.is_alive())
                and not self._stopped_by_bug
            ):
                self._start()
        self._wake.set()
        self._retry_now.set()
        with self._progress:
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if self._halted is not None and (self._stopped_by_bug or self._halted_tried_at > started):
                    # Tried again since this flush began, and still refused: nothing will be delivered until a
                    # person acts, so waiting longer would only hold the fit.
                    break
                if (
                    unless_unreachable
                    and self._unreachable_since is not None
                    and time.monotonic() - self._unreachable_since > AT_EXIT_PATIENCE_S
                ):
                    break  # at exit, a store that stays unreachable is not waited for; a blip is
                self._progress.wait(1.0 if remaining is None else min(remaining, 1.0))
        return self._take_report(target)

    def park(self, timeout: float = 30.0) -> DeliveryReport:
        """Stop the worker and put everything undelivered in the journal, in order. The next write restarts it."""
        thread = self._thread
        alive = thread is not None and thread.is_alive()
        if thread is not None and alive:
            self._park.set()
            self._wake.set()
            self._retry_now.set()
            self._transport.abort()  # a request in flight fails now instead of at its timeout
            if self._artifacts is not None:
                self._artifacts.abort()
            thread.join(timeout)
            alive = thread.is_alive()
            if alive:
                # A request that cannot be interrupted still hangs: journal what waits anyway, the request in
                # flight included. If it lands after all, replaying it later is harmless (the store keeps one
                # point per key, value, step and timestamp; a file put again overwrites itself).
                log.warning("MLflow run %s: a request to the store did not stop within %.0f s", self._run_id, timeout)
        with self._lock:
            front = [] if self._inflight_from_journal else [*self._sending, *self._inflight]
            front.extend(self._queue)
            self._inflight.clear()
            self._sending = []
            self._queue.clear()
            self._queued_points = 0
            self._to_journal(self._journal.prepend, front)
            self._spilling = self._journal.pending > 0
            if not alive:  # a worker still hanging in a request stops at its next check, and starts nothing
                self._park.clear()
        return self._take_report()

    def _to_journal(self, write: Callable[[list[Record]], None], records: list[Record]) -> None:
        """Write records to the journal (caller holds the lock); points it could not keep (a full or unwritable
        disk) count as done, lost, so no flush waits for them."""
        lost_before = self._journal.lost_points
        write(records)
        lost = self._journal.lost_points - lost_before
        if lost:
            self._done += lost
            self._progress.notify_all()
        self._count_handed_over()

    def _count_handed_over(self) -> None:
        """Points another process delivered from this run's journal count as done here (caller holds the lock)."""
        taken = self._journal.handed_over_points - self._handed_over_seen
        if taken:
            self._handed_over_seen += taken
            self._done += taken
            self._progress.notify_all()

    def discard(self) -> None:
        """Park, then drop whatever is undelivered with the journal file (a run deleted before it was used)."""
        self.park()
        self._journal.close()
        self._journal.path.unlink(missing_ok=True)

    def _take_report(self, target: int | None = None) -> DeliveryReport:
        """What happened since the last report; pending counts what was queued up to ``target`` (a flush does
        not answer for writes queued while it waited, such as a heartbeat)."""
        with self._lock:
            report, self._report = self._report, DeliveryReport()
            report.pending = self._pending_points() if target is None else max(target - self._done, 0)
            report.journal = self.journal_path if self._journal.exists else None
            report.lost = self._journal.lost_points
            if self._halted is not None:
                report.halted = self._halt_summary(self._halted)
        return report

    def _pending_points(self) -> int:
        return max(self._enqueued - self._done, 0)

    # ---- worker side ----------------------------------------------------------------------------

    def _start(self) -> None:
        self._park.clear()  # any earlier worker has ended: a park it did not see through is over
        self._thread = threading.Thread(target=self._run, name=f"mlflow-writer-{self._run_id[:8]}", daemon=True)
        self._thread.start()

    @property
    def _stopped_by_bug(self) -> bool:
        return self._halted is not None and self._halted.fault is Fault.BUG

    def _run(self) -> None:
        everything = True
        while not self._park.is_set():
            retrying = self._halted is not None
            if retrying:
                if self._stopped_by_bug:
                    return
                self._wake.wait(self._halted_retry_delay())  # a flush wakes it: one more try before giving up
                self._wake.clear()
                if self._park.is_set():
                    return
            self._drain(everything)
            if self._halted is not None:
                if retrying:
                    with self._progress:  # a flush waiting on this retry learns it failed too
                        self._halted_tried_at = time.monotonic()
                        self._progress.notify_all()
                continue
            if self._park.is_set() or self._retire_if_idle():
                return
            self._beat()
            # Woken early (a full request waiting, or a flush): full batches. Woken by the clock: all there is.
            everything = not self._wake.wait(self._flush_interval)
            self._wake.clear()

    def _retire_if_idle(self) -> bool:
        """End the worker when everything is delivered and no stage needs a heartbeat; the next write starts
        another. A finished run's writer then holds no thread that wakes every second."""
        with self._lock:
            idle = (
                self._halted is None
                and not self._beating
                and not self._queue
                and not self._inflight
                and self._journal.pending == 0
                and self._done >= self._enqueued
            )
            if idle:
                self._thread = None
            return idle

    def _beat(self) -> None:
        if self._heartbeat is None or not self._beating or time.monotonic() < self._next_beat or self._halted:
            return
        self._next_beat = time.monotonic() + self._heartbeat_interval
        self._submit(Record(tags=self._heartbeat()), wait=False)  # on the worker: never wait on itself

    def _drain(self, everything: bool) -> None:
        """Send what is queued on a wake-up, then keep going only while full batches wait, a flush waits, or
        a backlog is on disk: requests stay large (1000 points), which is what the server ingests fastest.

        Memory goes first: while spilling, it is older than the journal.
        """
        while not self._park.is_set():
            with self._lock:
                if everything or self._spilling or self._flush_target > self._done:
                    records = list(self._queue)
                    self._queue.clear()
                    self._queued_points = 0
                    # Once: what arrives while this is sent waits for a full batch (or the next tick), instead
                    # of being chased in requests of a few points, which costs the server far more per point.
                    everything = False
                else:
                    records = self._take_full_batches()
            if records:
                if not self._deliver(records):
                    return
                continue
            journaled, offset = self._journal.peek(200)
            with self._lock:
                self._count_handed_over()
            if journaled:
                if not self._deliver(journaled, journal_offset=offset):
                    return
                continue
            with self._lock:
                if not self._queue and self._journal.pending == 0:
                    self._spilling = False
            return

    def _deliver(self, records: list[Record], journal_offset: int | None = None) -> bool:
        """Send records (split to request size) and count them done; False if parked first.

        Records read from the journal (``journal_offset`` is where they end) stay in it until delivered.
        """
        self._inflight_from_journal = journal_offset is not None
        for record in records:
            self._inflight.extend(split(record))
        if not self._send_inflight():
            return False
        if journal_offset is not None:
            # Counted once the whole group is in the store: a group cut short is sent again whole from the
            # journal (points the store already holds are kept once, see journal.py).
            self._journal.advance(len(records), journal_offset)
            self._mark_done(sum(record.size for record in records))
        self._inflight_from_journal = False
        return True

    def _take_full_batches(self) -> list[Record]:
        """Whole multiples of a request's worth of points from the queue (caller holds the lock)."""
        unit = self._batch_points()
        want = (self._queued_points // unit) * unit
        taken: list[Record] = []
        while self._queue and want > 0:
            record = self._queue.popleft()
            if record.metrics and len(record.metrics) > want:
                self._queue.appendleft(Record(metrics=record.metrics[want:]))
                record = Record(metrics=record.metrics[:want])
            taken.append(record)
            want -= record.size
            self._queued_points -= record.size
        return taken

    def _mark_done(self, points: int) -> None:
        with self._progress:
            self._done += points
            self._progress.notify_all()

    def _send_inflight(self) -> bool:
        """Send the in-flight records in batches; False if parked before all were sent."""
        while self._inflight and not self._park.is_set():
            head = self._inflight[0]
            if head.metrics:
                batch: list[Record] = []
                points = 0
                while self._inflight and self._inflight[0].metrics and points < MAX_METRICS_PER_BATCH:
                    record = self._inflight.popleft()
                    room = MAX_METRICS_PER_BATCH - points
                    if len(record.metrics) > room:  # fill the request to the brim; the rest leads the next one
                        self._inflight.appendleft(Record(metrics=record.metrics[room:]))
                        record = Record(metrics=record.metrics[:room])
                    batch.append(record)
                    points += len(record.metrics)
                metrics = [point for record in batch for point in record.metrics]
                self._sending = batch
                sent = self._with_retries(self._send_metrics, metrics)
                self._sending = []
                if not sent:
                    if self._halted is None:  # parked: the batch goes back in front (a halt journaled it)
                        self._inflight.extendleft(reversed(batch))
                    return False
                self._count_sent(points)
                continue
            if not self._with_retries(self._send_other, head):
                return False
            with self._lock:
                if self._inflight and self._inflight[0] is head:  # a park may have journaled it meanwhile
                    self._inflight.popleft()
            self._count_sent(head.size)
        return not self._inflight

    def _count_sent(self, points: int) -> None:
        """Records from memory count as done request by request; a journal group counts once it is all sent."""
        if not self._inflight_from_journal:
            self._mark_done(points)

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

    def _with_retries(self, send: Callable[[T], None], payload: T) -> bool:
        """Send until it lands; False when parked first, or when a run-wide fault or a bug stopped delivery
        (the in-flight and queued writes are then in the journal)."""
        backoff = Backoff(self._retry_delays, self._park, self._retry_now)
        while True:
            try:
                send(payload)
            except Exception as raw:
                fault = classify_exception(self._transport.tracking_uri, raw)
                if fault.fault is not Fault.TRANSIENT:
                    self._halt(fault, raw)
                    return False
                self._note_unreachable(fault)
                if not backoff.wait(fault):
                    return False
                continue
            if self._warned_unreachable or self._halted is not None:
                log.warning("MLflow run %s: the tracking store takes writes again; delivery resumed.", self._run_id)
            self._unreachable_since = None
            self._warned_unreachable = False
            self._halted = None
            self._halt_attempts = 0
            return True

    def _note_unreachable(self, fault: DeliveryError) -> None:
        """Warn once the store has refused writes for UNREACHABLE_WARN_S: a blip that one retry cures (a 503, a
        reset connection) is retried quietly instead of filling the log with warnings and recoveries."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
            log.info("MLflow run %s: retrying a write the tracking store did not take (%s)", self._run_id, fault)
        if self._warned_unreachable or now - self._unreachable_since < UNREACHABLE_WARN_S:
            return
        self._warned_unreachable = True
        log.warning(
            "MLflow run %s: the tracking store has not taken writes for %.0f s (%s). Retrying in the background; "
            "writes wait in memory, and what is still undelivered when the run ends is kept in a journal under "
            "save_dir (the message then names the file).",
            self._run_id,
            now - self._unreachable_since,
            fault,
        )

    def _halted_retry_delay(self) -> float:
        """Retries of a halted run back off from the first retry delay to HALTED_RETRY_S."""
        self._halt_attempts += 1
        first = self._retry_delays[0]
        return float(min(first * 4**self._halt_attempts, HALTED_RETRY_S))

    def _halt(self, fault: DeliveryError, raw: BaseException) -> None:
        """Stop delivery: every write not yet in the store goes to the journal, in order; say once why."""
        first = self._halted is None or str(self._halted) != str(fault)
        with self._lock:
            front = [] if self._inflight_from_journal else [*self._sending, *self._inflight]
            front.extend(self._queue)
            self._inflight.clear()
            self._sending = []
            self._inflight_from_journal = False
            self._queue.clear()
            self._queued_points = 0
            self._to_journal(self._journal.prepend, front)
            self._spilling = True
            exists = self._journal.exists
        if first:
            self._say_halted(fault, raw, exists)
        with self._progress:  # said first: a flush waiting for these writes returns now, after the message
            self._halted = fault
            self._progress.notify_all()

    def _say_halted(self, fault: DeliveryError, raw: BaseException, journaled: bool) -> None:
        kept = (
            f"Nothing is lost: undelivered writes are kept in {self.journal_path}; once fixed, deliver them with: "
            f"lightning-mlflow sync {self.journal_path}"
            if journaled
            else f"Undelivered writes could not be written to the journal ({self._journal.problem}); they are lost"
        )
        if fault.fault is Fault.BUG:
            log.error(
                "MLflow run %s: lightning-mlflow-ext failed delivering writes (a bug: please report it with this "
                "traceback). Delivery stopped. %s.",
                self._run_id,
                kept,
                exc_info=(type(raw), raw, raw.__traceback__),
            )
            return
        log.error(
            "MLflow run %s: %s. Nothing more is sent to this run until this is fixed: %s. This process keeps "
            "trying every %.0f s with the credentials read again. %s.",
            self._run_id,
            fault,
            fault.advice or "see the message above",
            HALTED_RETRY_S,
            kept,
        )

    def _halt_summary(self, fault: DeliveryError) -> str:
        if fault.fault is Fault.BUG:
            return f"delivery stopped by a bug in lightning-mlflow-ext: {fault}"
        return f"{fault}; {fault.advice}" if fault.advice else str(fault)

    def _refuse(self, what: str, count: int, exc: Exception) -> None:
        message = f"MLflow refused {what} for run {self._run_id}: {exc}"
        with self._lock:
            self._report.rejected += count
            self._report.errors.append(message)
        if what not in self._reported:
            self._reported.add(what)
            log.warning(message)
