"""Background writer: turns queued metrics, params, tags and status changes into batched requests.

The training thread only appends to a bounded queue; one worker thread batches, sends, retries, and keeps
what it cannot deliver in the run's on-disk journal.

Threads: the training thread (and the uploader's, handing over artifact changes) queue, flush and park; the
worker sends. What both touch (the queue, the records in flight, the counters, the tail and heartbeat flags)
changes under ``_lock``; what only the worker touches is marked so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from lightning_mlflow_ext.delivery.batches import TAIL_POINTS, batch_points, split, tail_batch, take_points
from lightning_mlflow_ext.delivery.faults import DeliveryError
from lightning_mlflow_ext.delivery.journal import Journal
from lightning_mlflow_ext.delivery.outage import Outage
from lightning_mlflow_ext.delivery.records import ArtifactOp, KeyValue, MetricPoint, Record
from lightning_mlflow_ext.delivery.report import DeliveryReport
from lightning_mlflow_ext.delivery.sender import ArtifactSender, Sender
from lightning_mlflow_ext.delivery.transport import Transport
from lightning_mlflow_ext.delivery.worker import BackgroundWorker
from lightning_mlflow_ext.errors import WriteRefusedError

log = logging.getLogger(__name__)

#: What the run and trainer layers take from the writer.
__all__ = ["TAIL_POINTS", "DeliveryReport", "MetricPoint", "RunWriter"]


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
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        # Progress is counted in points (a status change counts one), which splitting a record preserves.
        self._worker = BackgroundWorker(f"mlflow-writer-{run_id[:8]}", self._run, self._progress)
        self._worker.queued = journal.pending_points() if journal.pending else 0
        self._park = self._worker.stopping
        self._queue: deque[Record] = deque()
        self._queued_points = 0
        self._spilling = journal.pending > 0  # writes already journaled are older than anything new
        self._inflight: deque[Record] = deque()
        self._inflight_from_journal = False  # changed on the worker only (under the lock: a park reads it)
        self._handed_over_seen = 0  # of the journal's handed_over_points, what the worker's done already counts
        self._sending: list[Record] = []  # the metrics request being sent (taken off _inflight)
        self._flush_target = 0  # a flush() waits until the worker's done reaches this
        self._wake = threading.Event()
        self._retry_now = threading.Event()  # set by a flush or a park: cut a transient backoff short
        self._outage = Outage(run_id, retry_delays[0], self._progress)
        self._sender = Sender(
            transport,
            run_id,
            artifacts,
            outage=self._outage,
            retry_delays=retry_delays,
            stop=self._park,
            retry_now=self._retry_now,
            halt=self._halt,
            progress=self._progress,
        )
        # Tags renewed every heartbeat_interval while the run is RUNNING (not after a final status).
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._next_beat = time.monotonic() + heartbeat_interval  # the worker's
        self._beating = True
        self._tail_batch = 0  # 0: not in a stage's tail
        if self._spilling:
            with self._lock:
                self._worker.start()

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
        with self._lock:
            self._beating = status == "RUNNING"
            self._tail_batch = 0
        self._submit(Record(status=status, end_time=end_time))

    def set_heartbeat(self, on: bool) -> None:
        """Renew the heartbeat tags while this process works in the run (a stage), not after."""
        with self._lock:
            self._beating = on
            self._tail_batch = 0

    def begin_tail(self, points_left: int) -> None:
        """The stage ends after about ``points_left`` more points: send in smaller requests from now on (see
        ``batches.tail_batch``), until its final status or heartbeat."""
        batch = tail_batch(points_left)
        with self._lock:
            wake = not self._tail_batch
            self._tail_batch = batch
        if wake:
            self._wake.set()

    def _submit(self, record: Record, *, wait: bool = True) -> None:
        size = record.size
        worker = self._worker
        with self._lock:
            worker.queued += size  # (the training loop's every logging step: no call it can do without)
            if self._spilling or self._queued_points + size > self._max_queued:
                # The store is slower than the loop: keep memory bounded, let the disk hold the rest.
                self._spilling = True
                self._to_journal(self._journal.append, [record])
            else:
                self._queue.append(record)
                self._queued_points += size
            full = self._queued_points >= batch_points(self._tail_batch)
            if not worker.running and not self._outage.stopped_by_bug and worker.start():
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
        with self._lock:
            target = self._worker.queued
            self._flush_target = max(self._flush_target, target)
            if self._worker.done < target and not self._outage.stopped_by_bug:
                self._worker.start()
        self._wake.set()
        self._retry_now.set()
        self._worker.wait_done(
            target, timeout, give_up=lambda: self._outage.gives_up(started, at_exit=unless_unreachable)
        )
        return self._take_report(target)

    def park(self, timeout: float = 30.0) -> DeliveryReport:
        """Stop the worker and put everything undelivered in the journal, in order. The next write restarts it."""
        if not self._worker.stop(timeout, self._interrupt):
            # A request that cannot be interrupted still hangs: journal what waits anyway, the request in
            # flight included. If it lands after all, replaying it later is harmless (the store keeps one
            # point per key, value, step and timestamp; a file put again overwrites itself). The worker stops
            # at its next check, and starts nothing.
            log.warning("MLflow run %s: a request to the store did not stop within %.0f s", self._run_id, timeout)
        with self._lock:
            self._journal_undelivered()
            self._spilling = self._journal.pending > 0
        return self._take_report()

    def _interrupt(self) -> None:
        """Cut short what the worker may be blocked in: its wait, a backoff, a request or an upload in flight."""
        self._wake.set()
        self._retry_now.set()
        self._transport.abort()  # a request in flight fails now instead of at its timeout
        if self._artifacts is not None:
            self._artifacts.abort()

    def _journal_undelivered(self) -> None:
        """Put every write not in the store yet in front of the journal, in order (caller holds the lock): the
        request being sent, the rest in flight, the queue. Records read from the journal are still in it."""
        front = [] if self._inflight_from_journal else [*self._sending, *self._inflight]
        front.extend(self._queue)
        self._inflight.clear()
        self._sending = []
        self._queue.clear()
        self._queued_points = 0
        self._to_journal(self._journal.prepend, front)

    def _to_journal(self, write: Callable[[list[Record]], None], records: list[Record]) -> None:
        """Write records to the journal (caller holds the lock); points it could not keep (a full or unwritable
        disk) count as done, lost, so no flush waits for them."""
        lost_before = self._journal.lost_points
        write(records)
        lost = self._journal.lost_points - lost_before
        if lost:
            self._worker.count_done(lost)
        self._count_handed_over()

    def _count_handed_over(self) -> None:
        """Points another process delivered from this run's journal count as done here (caller holds the lock)."""
        taken = self._journal.handed_over_points - self._handed_over_seen
        if taken:
            self._handed_over_seen += taken
            self._worker.count_done(taken)

    def discard(self) -> None:
        """Park, then drop whatever is undelivered with the journal file (a run deleted before it was used)."""
        self.park()
        self._journal.close()
        self._journal.path.unlink(missing_ok=True)

    def _take_report(self, target: int | None = None) -> DeliveryReport:
        """What happened since the last report; pending counts what was queued up to ``target`` (a flush does
        not answer for writes queued while it waited, such as a heartbeat)."""
        with self._lock:
            report = DeliveryReport()
            report.rejected, report.errors = self._sender.take_refused()
            done = self._worker.done
            report.pending = max((self._worker.queued if target is None else target) - done, 0)
            report.journal = self.journal_path if self._journal.exists else None
            report.lost = self._journal.lost_points
            report.halted = self._outage.summary()
        return report

    # ---- worker side ----------------------------------------------------------------------------

    def _run(self) -> None:
        everything = True
        while not self._park.is_set():
            retrying = self._outage.halted is not None
            if retrying:
                if self._outage.stopped_by_bug:
                    return
                self._wake.wait(self._outage.retry_delay())  # a flush wakes it: one more try before giving up
                self._wake.clear()
                if self._park.is_set():
                    return
            self._drain(everything)
            if self._outage.halted is not None:
                if retrying:
                    self._outage.tried_again()
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
                self._outage.halted is None
                and not self._beating
                and not self._queue
                and not self._inflight
                and self._journal.pending == 0
                and self._worker.done >= self._worker.queued
            )
            if idle:
                self._worker.retire()
            return idle

    def _beat(self) -> None:
        with self._lock:
            beating = self._beating
        if self._heartbeat is None or not beating or time.monotonic() < self._next_beat or self._outage.halted:
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
                if everything or self._spilling or self._flush_target > self._worker.done:
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
        with self._lock:
            self._inflight_from_journal = journal_offset is not None
            for record in records:
                self._inflight.extend(split(record))
        if not self._send_inflight():
            return False
        if journal_offset is not None:
            # Counted once the whole group is in the store: a group cut short is sent again whole from the
            # journal (points the store already holds are kept once, see journal.py).
            self._journal.advance(len(records), journal_offset)
            self._worker.mark_done(sum(record.size for record in records))
        with self._lock:
            self._inflight_from_journal = False
        return True

    def _take_full_batches(self) -> list[Record]:
        """Whole multiples of a request's worth of points from the queue (caller holds the lock)."""
        unit = batch_points(self._tail_batch)
        taken = take_points(self._queue, (self._queued_points // unit) * unit)
        self._queued_points -= sum(record.size for record in taken)
        return taken

    def _send_inflight(self) -> bool:
        """Send the in-flight records in batches; False if parked before all were sent."""
        while not self._park.is_set():
            with self._lock:
                if not self._inflight:
                    return True
                head = self._inflight[0]
                batch = take_points(self._inflight, batch_points(0), metrics_only=True)
                self._sending = batch
            if batch:
                points = sum(len(record.metrics) for record in batch)
                sent = self._sender.metrics([point for record in batch for point in record.metrics])
                with self._lock:
                    journaled = self._sending is not batch  # a park or a halt put it in the journal meanwhile
                    self._sending = []
                    if not sent and not journaled:  # parked: the batch goes back in front
                        self._inflight.extendleft(reversed(batch))
                if not sent:
                    return False
                self._count_sent(points)
                continue
            if not self._sender.other(head):
                return False
            with self._lock:
                if self._inflight and self._inflight[0] is head:  # a park may have journaled it meanwhile
                    self._inflight.popleft()
            self._count_sent(head.size)
        with self._lock:
            return not self._inflight

    def _count_sent(self, points: int) -> None:
        """Records from memory count as done request by request; a journal group counts once it is all sent."""
        if not self._inflight_from_journal:
            self._worker.mark_done(points)

    def _halt(self, fault: DeliveryError, raw: BaseException) -> None:
        """Stop delivery: every write not yet in the store goes to the journal, in order; say once why."""
        first = self._outage.is_new(fault)
        with self._lock:
            self._journal_undelivered()
            self._inflight_from_journal = False
            self._spilling = True
            exists = self._journal.exists
        if first:
            self._outage.say_halted(fault, raw, self.journal_path if exists else None, self._journal.problem)
        self._outage.halt(fault)  # said first: a flush waiting for these writes returns now, after the message
