"""Runs left open at exit: no run this package opened stays RUNNING after the interpreter exits.

A session whose run is RUNNING because of it is tracked here (strong references: a logger dropped without
``finalize()`` still gets its writes delivered, or journaled, and its run ended at exit).
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Protocol

from lightning_mlflow_ext.delivery.writer import DeliveryReport
from lightning_mlflow_ext.run.lifecycle import FinalStatus

log = logging.getLogger(__name__)

#: The longest one run's end waits for the store at exit.
EXIT_WAIT_S = 30.0


class OpenRun(Protocol):
    """What ending a run at exit needs of its session."""

    @property
    def known_run_id(self) -> str | None: ...

    @property
    def flush_timeout(self) -> float: ...

    def end(self, status: FinalStatus, timeout: float | None = None, *, at_exit: bool = False) -> DeliveryReport: ...


_open: set[OpenRun] = set()


def track(session: OpenRun, *, open_at_exit: bool) -> None:
    """Record whether ``session`` must end its run if the process exits now."""
    if open_at_exit:
        _open.add(session)
    else:
        _open.discard(session)


@atexit.register
def _end_runs_left_open() -> None:
    # An uncaught exception leaves sys.last_value; a Jupyter kernel sets it for every cell that raised, long
    # past, and a kernel shutting down is not a crash (a fit that failed in a cell already ended its run).
    uncaught = None if "ipykernel" in sys.modules else getattr(sys, "last_value", None)
    status: FinalStatus = "FINISHED"
    if isinstance(uncaught, KeyboardInterrupt):
        status = "KILLED"
    elif uncaught is not None:
        status = "FAILED"
    end_open_runs(status)


def end_open_runs(status: FinalStatus) -> None:
    """End every run still open because of a session of this process (at exit)."""
    for session in list(_open):
        try:
            report = session.end(status, timeout=min(EXIT_WAIT_S, session.flush_timeout), at_exit=True)
            message = report.undelivered_message(session.known_run_id or "")
            if message:
                log.warning(message)
        except Exception as exc:  # at exit, report and carry on with the next run
            log.warning("Could not end MLflow run %s at exit: %s", session.known_run_id, exc)
