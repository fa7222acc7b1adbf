"""The process's recent output, kept in a bounded ring buffer, so a failed run can record the lines that led up
to its failure (``failure/output_tail.txt``).

Captured at the Python level: ``sys.stdout`` and ``sys.stderr`` are replaced by a `TeeStream` that hands every
write on unchanged to the stream it replaced and keeps a copy, and so are the streams of logging handlers that
write to them (Lightning's messages go through one made at import). Not at the file-descriptor level: a pipe
read by a thread would catch C and subprocess output too, but it changes what fd 1 is for every library (a
``RUN_ID=$(python step.py)`` reads it), can lose or reorder output when the process dies, and fights Jupyter's
and pytest's own fd capture. What bypasses Python's streams (C extensions, ``sys.stdout.buffer``, child
processes) is therefore not in the tail.

The capture is process-wide and counted: the first `OutputTail.start` installs it, the last `stop` restores
the streams it replaced, unless something was put on top of them since: then it only stops copying and keeps
handing writes on, so nobody's stream is lost.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections import deque
from typing import Any, TextIO

__all__ = ["TAIL_LINES", "OutputTail", "TeeStream"]

#: How many lines of output a failure record keeps...
TAIL_LINES = 200
#: ... and at most this many characters of them (the last ones): what a failure record scans for secrets.
TAIL_CHARS = 256 * 1024
#: The ring holds the last this many writes (a ``print`` of one line is at least two: the text, then ``"\n"``)...
KEEP_WRITES = 4096
#: ... each cut to its last this many characters: at most 8 M characters are held, whatever the output rate.
WRITE_CHARS = 2048
_STREAMS = ("stdout", "stderr")


class _Ring:
    """The last `KEEP_WRITES` writes. No lock and no character count: a bounded deque's append is atomic, and
    this runs on every write of the process (a lock and a count made a ``print`` three times as slow; as it is,
    a one-line ``print`` to a file takes 1.0 µs instead of 0.66 µs, about 0.17 µs a write)."""

    def __init__(self) -> None:
        self.writes: deque[str] = deque(maxlen=KEEP_WRITES)

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines, each as a terminal would show it (a progress bar's ``\\r`` rewrites kept
        as their last state)."""
        text = "".join(self.writes.copy())  # copied at once (in C): other threads may be writing
        kept = text.split("\n")
        if kept[-1] == "":
            kept.pop()
        tail = "".join(line.rstrip("\r").rsplit("\r", 1)[-1] + "\n" for line in kept[-lines:])
        return tail[-TAIL_CHARS:]


class TeeStream:
    """A text stream that writes to ``original`` and copies what it writes into a ring; everything else (``flush``,
    ``fileno``, ``isatty``, ``encoding``, Jupyter's ``set_parent``) is the original's."""

    def __init__(self, original: TextIO, ring: _Ring) -> None:
        self.original = original
        self.recording = True
        self._ring = ring

    def write(self, text: str) -> int:
        written = self.original.write(text)  # first: a write that fails raises as it did, and is not kept
        if self.recording:
            self._ring.writes.append(text if len(text) <= WRITE_CHARS else text[-WRITE_CHARS:])
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _Capture:
    """The one capture of this process: the streams it replaced, in ``sys`` and in logging handlers."""

    def __init__(self) -> None:
        self.ring = _Ring()
        self.tees: dict[str, TeeStream] = {}
        self.handlers: list[tuple[logging.StreamHandler[Any], TeeStream]] = []
        for name in _STREAMS:
            current = getattr(sys, name, None)
            if current is not None:  # pythonw and some embedders have no stream at all
                self.tees[name] = TeeStream(current, self.ring)
                setattr(sys, name, self.tees[name])
        by_stream = {id(tee.original): tee for tee in self.tees.values()}
        for handler in _stream_handlers():
            replacing = by_stream.get(id(handler.stream))
            if replacing is not None:
                handler.setStream(replacing)
                self.handlers.append((handler, replacing))

    def remove(self) -> None:
        for name, tee in self.tees.items():
            tee.recording = False
            if getattr(sys, name, None) is tee:
                setattr(sys, name, tee.original)
        for handler, tee in self.handlers:
            if handler.stream is tee:
                handler.setStream(tee.original)


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    found: list[logging.StreamHandler[Any]] = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # a PlaceHolder has none
            if isinstance(handler, logging.StreamHandler) and handler not in found:
                found.append(handler)
    return found


_lock = threading.Lock()
_capture: _Capture | None = None
_holders = 0


def _acquire() -> _Ring:
    global _capture, _holders
    with _lock:
        if _capture is None:
            _capture = _Capture()
        _holders += 1
        return _capture.ring


def _release() -> None:
    global _capture, _holders
    with _lock:
        _holders -= 1
        if _holders == 0 and _capture is not None:
            _capture.remove()
            _capture = None


class OutputTail:
    """One holder's view of the capture: output is kept from `start` (or an earlier holder's) until `stop`.

    Example::

        watch = OutputTail()
        watch.start()
        print("epoch 3, loss nan")
        watch.tail()   # '...epoch 3, loss nan\\n'
        watch.stop()   # sys.stdout and sys.stderr are what they were
    """

    def __init__(self) -> None:
        self._ring: _Ring | None = None
        self._release: weakref.finalize[Any, OutputTail] | None = None

    def start(self) -> None:
        """Keep the process's output from now on (a second call while capturing does nothing)."""
        if self._ring is None:
            self._ring = _acquire()
            # A holder dropped without stop() (a logger garbage-collected mid-stage) must not keep the capture.
            self._release = weakref.finalize(self, _release)

    def tail(self, lines: int = TAIL_LINES) -> str | None:
        """The last ``lines`` lines written to ``sys.stdout`` / ``sys.stderr``, in the order they were written;
        None when not capturing."""
        return None if self._ring is None else self._ring.tail(lines)

    def stop(self) -> None:
        """Stop keeping output; the last holder puts the streams back."""
        if self._release is not None:
            self._release()  # calls _release() once
        self._ring = self._release = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_ring": None, "_release": None}  # a copy in another process captures nothing until started
