"""One warning per cause: a fit that hits the same problem a million times says so once."""

from __future__ import annotations

import logging
import threading


class WarnOnce:
    """``warn(cause, message)`` logs ``message`` the first time ``cause`` is seen; thread-safe."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, cause: str, message: str) -> bool:
        """Log ``message`` unless ``cause`` was warned about already; return whether it was logged."""
        with self._lock:
            if cause in self._seen:
                return False
            self._seen.add(cause)
        self._log.warning("%s", message)
        return True

    def __getstate__(self) -> dict[str, object]:
        return {"log": self._log.name, "seen": sorted(self._seen)}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(logging.getLogger(str(state["log"])))  # type: ignore[misc]
        self._seen.update(state["seen"])  # type: ignore[arg-type]

    def seen(self, cause: str) -> bool:
        with self._lock:
            return cause in self._seen

    def forget(self) -> None:
        """Warn again about every cause (a new run)."""
        with self._lock:
            self._seen.clear()
