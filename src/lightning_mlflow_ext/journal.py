"""On-disk journal of writes a run has not delivered yet: one JSON-lines file per run under ``save_dir``.

Points keep the timestamp they were queued with, so replaying a journal twice stores nothing twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lightning_mlflow_ext.transport import KeyValue, MetricPoint

JOURNAL_DIR = "mlflow-journal"
SUFFIX = ".jsonl"
FORMAT_VERSION = 1


@dataclass
class Record:
    """One unit of work: metric points, params, or a final run status."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: list[KeyValue] = field(default_factory=list)
    tags: list[KeyValue] = field(default_factory=list)
    status: str | None = None
    end_time: int | None = None

    @property
    def size(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags) + (1 if self.status else 0)

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        if self.metrics:
            data["m"] = self.metrics
        if self.params:
            data["p"] = self.params
        if self.tags:
            data["t"] = self.tags
        if self.status:
            data["s"] = [self.status, self.end_time]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        data = json.loads(line)
        status = data.get("s") or [None, None]
        return cls(
            metrics=[(str(k), float(v), int(ts), int(step)) for k, v, ts, step in data.get("m", [])],
            params=[(str(k), str(v)) for k, v in data.get("p", [])],
            tags=[(str(k), str(v)) for k, v in data.get("t", [])],
            status=status[0],
            end_time=status[1],
        )


def journal_path(save_dir: str | os.PathLike[str], run_id: str) -> Path:
    return Path(save_dir) / JOURNAL_DIR / f"{run_id}{SUFFIX}"


def find_journals(path: str | os.PathLike[str]) -> list[Path]:
    """Journal files at ``path``: the file itself, or every journal below a folder (a ``save_dir``)."""
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(f"*{SUFFIX}") if p.parent.name == JOURNAL_DIR)


@dataclass
class Header:
    run_id: str
    tracking_uri: str


class Journal:
    """A FIFO of records in a file: appended at the end, read from a cursor, emptied when all is delivered."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        self._lock = threading.Lock()
        self._cursor = 0  # byte offset of the first record not yet delivered
        self._pending = 0  # records after the cursor
        self._handle: IO[str] | None = None

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        with path.open("r", encoding="utf-8") as handle:
            first = json.loads(handle.readline())
        journal = cls(path, Header(run_id=first["run_id"], tracking_uri=first["tracking_uri"]))
        journal._cursor = journal._header_length()
        journal._pending = sum(1 for _ in journal._lines_from(journal._cursor))
        return journal

    def _header_line(self) -> str:
        return json.dumps({"journal": FORMAT_VERSION, **self.header.__dict__}) + "\n"

    def _header_length(self) -> int:
        with self.path.open("rb") as handle:
            return len(handle.readline())

    def _lines_from(self, offset: int) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as handle:
            handle.seek(offset)
            for raw in handle:
                offset += len(raw)
                if raw.endswith(b"\n"):  # a line cut by a crash mid-write is not a record
                    yield offset, raw.decode("utf-8")

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        with self._lock:
            new_file = not self.path.exists()
            if new_file:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if new_file or self._handle is None:
                self._handle = self.path.open("a", encoding="utf-8")
                if new_file:
                    self._handle.write(self._header_line())
                    self._cursor = len(self._header_line().encode())
            # Flushed to the OS on every append (another process may read it); fsynced when the writer parks.
            self._handle.write("".join(record.to_json() + "\n" for record in records))
            self._handle.flush()
            self._pending += len(records)

    def peek(self, limit: int) -> tuple[list[Record], int]:
        """Up to ``limit`` records from the cursor, and the offset just past them."""
        records: list[Record] = []
        end = self._cursor
        if self._pending == 0:
            return records, end
        for offset, line in self._lines_from(self._cursor):
            end = offset
            records.append(Record.from_json(line))
            if len(records) >= limit:
                break
        return records, end

    def advance(self, count: int, offset: int) -> None:
        """Mark ``count`` records up to ``offset`` delivered; remove the file once nothing is left."""
        with self._lock:
            self._cursor = offset
            self._pending -= count
            if self._pending <= 0:
                self._pending = 0
                self._close_handle()
                self.path.unlink(missing_ok=True)

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def prepend(self, records: list[Record]) -> None:
        """Put records that are older than everything in the journal in front of it (at close, server down).

        Either way the journal is on disk (fsynced) when this returns.
        """
        if not records:
            with self._lock:
                if self._handle is not None:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                self._close_handle()
            return
        with self._lock:
            self._close_handle()
            rest = [line for _, line in self._lines_from(self._cursor)] if self.path.exists() else []
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(self._header_line())
                handle.write("".join(record.to_json() + "\n" for record in records))
                handle.write("".join(rest))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            self._cursor = len(self._header_line().encode())
            self._pending = len(records) + len(rest)

    def pending_points(self) -> int:
        return sum(record.size for record, _ in self._records_with_offsets())

    def _records_with_offsets(self) -> Iterator[tuple[Record, int]]:
        if not self.path.exists():
            return
        for offset, line in self._lines_from(self._cursor):
            yield Record.from_json(line), offset
