"""One background thread per delivery queue, there only while there is work: the writer's and the uploader's.

A thread is started by the first work queued, ends itself once idle (a finished run holds no thread that wakes
every second), and the next work starts another. Progress is two counters under one lock, so a flush waits for
exactly what was queued before it, not for what arrives meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: While a flush can give up early, how often it checks whether it should.
GIVE_UP_POLL_S = 1.0


class BackgroundWorker:
    """The thread, the stop signal and the progress counters of one queue; the owner writes the loop.

    ``progress`` is the owner's condition: its lock guards the owner's queue as well as ``queued`` and ``done``, so
    counting work and queuing it are one step. Methods marked "caller holds the lock" are called inside
    ``with progress:``.
    """

    def __init__(self, name: str, loop: Callable[[], None], progress: threading.Condition) -> None:
        self.name = name
        self._loop = loop
        self.progress = progress
        #: Set by ``stop``: the loop returns at its next check. Cleared when the next thread starts.
        self.stopping = threading.Event()
        self.queued = 0
        self.done = 0
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """A thread is working, or is still finishing a request ``stop`` could not interrupt."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def add(self, count: int, *, start: bool = True) -> bool:
        """Count ``count`` more units of work (caller holds the lock), and start a thread if none runs and
        ``start`` allows; True if one was started."""
        self.queued += count
        return self.start() if start else False

    def start(self) -> bool:
        """Start a thread unless one runs (caller holds the lock); True if one was started. An earlier thread has
        ended, so a stop it did not see through is over."""
        if self.running:
            return False
        self.stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return True

    def retire(self) -> None:
        """From the loop, about to return because there is nothing to do (caller holds the lock): the next work
        starts a new thread rather than waiting for this one."""
        self._thread = None

    def count_done(self, count: int) -> None:
        """``count`` units are delivered, refused or handed on (caller holds the lock)."""
        self.done += count
        self.progress.notify_all()

    def mark_done(self, count: int) -> None:
        with self.progress:
            self.count_done(count)

    def wait_done(
        self, target: int, timeout: float | None = None, *, give_up: Callable[[], bool] | None = None
    ) -> bool:
        """Wait until ``target`` units are done, at most ``timeout`` seconds; False if they are not. ``give_up``
        (asked with the lock held, about once a second) ends the wait early when waiting cannot help."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.progress:
            while self.done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if give_up is not None:
                    if give_up():
                        return False
                    remaining = GIVE_UP_POLL_S if remaining is None else min(remaining, GIVE_UP_POLL_S)
                self.progress.wait(remaining)
            return True

    def stop(self, timeout: float, interrupt: Callable[[], None]) -> bool:
        """Ask the thread to stop, ``interrupt`` what it may be blocked in, and wait at most ``timeout`` seconds for
        it to end; True if no thread runs any more. One that still hangs keeps ``stopping`` set and ends at its
        next check, starting nothing."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        self.stopping.set()
        with self.progress:
            self.progress.notify_all()  # a loop waiting for work sees the stop
        interrupt()
        thread.join(timeout)
        return not thread.is_alive()
