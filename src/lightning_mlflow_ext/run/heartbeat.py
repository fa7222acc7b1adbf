"""The heartbeat tag: which process writes into a run, and whether that process still lives.

A run left RUNNING by a process that was killed (no atexit, no final status) looks like a live run. Every
process writing into a run renews ``HEARTBEAT_TAG`` with its time, host and pid, so the next process to find
the run can tell a dead writer from a live one, and take the run over.
"""

from __future__ import annotations

import os
import socket
import time
from typing import NamedTuple

#: How often a process that works in a run renews its heartbeat.
HEARTBEAT_INTERVAL = 60.0
#: A heartbeat from another host older than this means its process is gone.
HEARTBEAT_STALE_AFTER = 5 * HEARTBEAT_INTERVAL


class Heartbeat(NamedTuple):
    """One heartbeat tag's value, read back."""

    written: float  # unix time
    host: str
    pid: int

    @property
    def stopped(self) -> bool:
        """True when the process that wrote this heartbeat is gone.

        On this host the pid is asked directly; from another host only the heartbeat's age can tell.
        """
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        return time.time() - self.written > HEARTBEAT_STALE_AFTER


def heartbeat() -> str:
    """This process, now: ``"<unix time> <host> <pid>"``."""
    return f"{time.time():.0f} {socket.gethostname()} {os.getpid()}"


def parse_heartbeat(value: str | None) -> Heartbeat | None:
    """The heartbeat a tag value holds; None for anything else (no tag, ``released``, a value of another tool)."""
    try:
        stamp, host, pid = (value or "").split(" ")
        return Heartbeat(float(stamp), host, int(pid))
    except ValueError:
        return None


def heartbeat_stopped(value: str | None) -> bool:
    """True when the process that last wrote this heartbeat is gone (unknown: False, assume it lives)."""
    beat = parse_heartbeat(value)
    return beat is not None and beat.stopped
