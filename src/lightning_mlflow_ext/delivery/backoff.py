"""How long to wait before trying a transient fault again: one policy for the writer and the uploader.

Doubling from the first delay to the longest, never shorter than the server's ``Retry-After``.
"""

from __future__ import annotations

import threading

from lightning_mlflow_ext.delivery.faults import DeliveryError


class Backoff:
    """The waits between tries of one write. ``stop`` ends them (a park); ``retry_now`` (a flush) cuts a backoff
    short, but never a wait the server asked for."""

    def __init__(self, delays: tuple[float, float], stop: threading.Event, retry_now: threading.Event) -> None:
        self._delay, self._longest = delays
        self._stop = stop
        self._retry_now = retry_now

    def wait(self, fault: DeliveryError) -> bool:
        """Wait before the next try; False when stopped instead."""
        if fault.retry_after is not None:
            stopped = self._stop.wait(max(fault.retry_after, self._delay))
        else:
            self._retry_now.wait(self._delay)
            self._retry_now.clear()
            stopped = self._stop.is_set()
        self._delay = min(self._delay * 2, self._longest)
        return not stopped
