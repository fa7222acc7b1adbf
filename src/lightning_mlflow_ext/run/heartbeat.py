"""The heartbeat tag: which process writes into a run, and whether that process still lives.

A run left RUNNING by a process that was killed (no atexit, no final status) looks like a live run. Every
process writing into a run renews ``HEARTBEAT_TAG`` with its time, host and pid, so the next process to find
the run can tell a dead writer from a live one, and take the run over.
"""

from __future__ import annotations

import os
import socket
import time

#: How often a process that works in a run renews its heartbeat.
HEARTBEAT_INTERVAL = 60.0
#: A heartbeat from another host older than this means its process is gone.
HEARTBEAT_STALE_AFTER = 5 * HEARTBEAT_INTERVAL


def heartbeat() -> str:
    """This process, now: ``"<unix time> <host> <pid>"``."""
    return f"{time.time():.0f} {socket.gethostname()} {os.getpid()}"


def heartbeat_stopped(value: str | None) -> bool:
    """True when the process that last wrote this heartbeat is gone (unknown: False, assume it lives).

    On this host the pid is asked directly; from another host only the heartbeat's age can tell.
    """
    try:
        stamp, host, pid = (value or "").split(" ")
        written, process = float(stamp), int(pid)
    except ValueError:
        return False
    if host == socket.gethostname():
        try:
            os.kill(process, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - written > HEARTBEAT_STALE_AFTER
