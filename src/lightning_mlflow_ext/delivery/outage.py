"""Whether the store takes a run's writes, and what the user is told when it does not.

Three states: delivering; unreachable (transient faults, retried quietly, then a warning after
UNREACHABLE_WARN_S); halted (a run-wide fault or a bug: delivery stops, everything undelivered is in the
journal, one message says what to do, and a run-wide fault is tried again up to every HALTED_RETRY_S).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault

log = logging.getLogger(__name__)

#: At exit, how long a store that refuses writes is waited for before what is left goes to the journal.
AT_EXIT_PATIENCE_S = 2.0

#: How long the store may refuse writes (transient faults) before the user is warned.
UNREACHABLE_WARN_S = 5.0

#: How often a run whose delivery stopped for a run-wide fault (refused credentials, a deleted run) is tried
#: again, with the credentials read anew: a renewed token or password resumes delivery without a restart.
HALTED_RETRY_S = 30.0


class Outage:
    """One run's delivery state against the store, as the writer's worker finds it.

    Only the worker changes it. ``halted``, ``unreachable_since`` and ``tried_at`` are also read by flushes and
    reports on other threads, so they change under ``progress`` (the writer's condition: a waiting flush is
    woken) and are read under it; the warning flag and the retry count are the worker's alone.
    """

    def __init__(self, run_id: str, first_retry_s: float, progress: threading.Condition) -> None:
        self._run_id = run_id
        self._first_retry_s = first_retry_s
        self._progress = progress
        #: Set when a run-wide fault or a bug stopped delivery; everything undelivered is then in the journal.
        self.halted: DeliveryError | None = None
        self.unreachable_since: float | None = None
        #: When a halted run was last tried again.
        self.tried_at = -math.inf
        self._warned = False
        self._attempts = 0

    @property
    def stopped_by_bug(self) -> bool:
        """Delivery stopped for a bug of this package: nothing is tried again in this process."""
        return self.halted is not None and self.halted.fault is Fault.BUG

    # ---- the worker's side ----------------------------------------------------------------------

    def note_unreachable(self, fault: DeliveryError) -> None:
        """Warn once the store has refused writes for UNREACHABLE_WARN_S: a blip that one retry cures (a 503, a
        reset connection) is retried quietly instead of filling the log with warnings and recoveries."""
        now = time.monotonic()
        if self.unreachable_since is None:
            with self._progress:
                self.unreachable_since = now
            log.info("MLflow run %s: retrying a write the tracking store did not take (%s)", self._run_id, fault)
        if self._warned or now - self.unreachable_since < UNREACHABLE_WARN_S:
            return
        self._warned = True
        log.warning(
            "MLflow run %s: the tracking store has not taken writes for %.0f s (%s). Retrying in the background; "
            "writes wait in memory, and what is still undelivered when the run ends is kept in a journal under "
            "save_dir (the message then names the file).",
            self._run_id,
            now - self.unreachable_since,
            fault,
        )

    def recovered(self) -> None:
        """A write landed: the store takes writes again."""
        if self._warned or self.halted is not None:
            log.warning("MLflow run %s: the tracking store takes writes again; delivery resumed.", self._run_id)
        with self._progress:
            self.unreachable_since = None
            self.halted = None
        self._warned = False
        self._attempts = 0

    def is_new(self, fault: DeliveryError) -> bool:
        """Not the fault delivery is already halted for: the user has not been told of it yet."""
        return self.halted is None or str(self.halted) != str(fault)

    def halt(self, fault: DeliveryError) -> None:
        """Delivery stops (the writer has journaled what was undelivered): a waiting flush returns now."""
        with self._progress:
            self.halted = fault
            self._progress.notify_all()

    def retry_delay(self) -> float:
        """How long a halted run waits before its next try: from the first retry delay up to HALTED_RETRY_S."""
        self._attempts += 1
        return float(min(self._first_retry_s * 4**self._attempts, HALTED_RETRY_S))

    def tried_again(self) -> None:
        """A halted run was tried again and still refused: a flush waiting on that try learns it failed too."""
        with self._progress:
            self.tried_at = time.monotonic()
            self._progress.notify_all()

    # ---- the flushing side ------------------------------------------------------------------------

    def gives_up(self, started: float, *, at_exit: bool) -> bool:
        """A flush that began at ``started`` stops waiting (caller holds the lock): a halted run was tried again
        since and still refused (nothing is delivered until a person acts, so waiting longer would only hold the
        fit), or, ``at_exit``, the store has stayed unreachable past AT_EXIT_PATIENCE_S (a blip is waited for)."""
        if self.halted is not None and (self.stopped_by_bug or self.tried_at > started):
            return True
        return (
            at_exit
            and self.unreachable_since is not None
            and time.monotonic() - self.unreachable_since > AT_EXIT_PATIENCE_S
        )

    def summary(self) -> str | None:
        """Why delivery stopped and what to do, for a report; None while it has not (caller holds the lock)."""
        fault = self.halted
        if fault is None:
            return None
        if fault.fault is Fault.BUG:
            return f"delivery stopped by a bug in lightning-mlflow-ext: {fault}"
        return f"{fault}; {fault.advice}" if fault.advice else str(fault)

    # ---- wording ------------------------------------------------------------------------------

    def say_halted(self, fault: DeliveryError, raw: BaseException, journal: str | None, problem: str | None) -> None:
        """The one message for a halt: what happened, what to set, and where the undelivered writes are
        (``journal``, when that file exists; else ``problem``, why the journal could not keep them)."""
        kept = (
            f"Nothing is lost: undelivered writes are kept in {journal}; once fixed, deliver them with: "
            f"lightning-mlflow sync {journal}"
            if journal
            else f"Undelivered writes could not be written to the journal ({problem}); they are lost"
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
