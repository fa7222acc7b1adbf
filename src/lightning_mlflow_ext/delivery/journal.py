"""On-disk journal of writes a run has not delivered yet: one JSON-lines file per run under ``save_dir``.

Points keep the timestamp they were queued with, so replaying a journal twice stores nothing twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_mlflow_ext.delivery.transport import KeyValue, MetricPoint
from lightning_mlflow_ext.errors import JournalCorruptError, JournalInUseError
from lightning_mlflow_ext.warn_once import WarnOnce

try:
    import fcntl
except ImportError:  # Windows has no flock: no locking there, one process per save_dir is the user's to ensure
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

JOURNAL_DIR = "mlflow-journal"
SUFFIX = ".jsonl"
FORMAT_VERSION = 1
#: Files one journal tries (its own name, then ``<run_id>.<pid>.jsonl``, ``<run_id>.<pid>.2.jsonl``...) before
#: it gives up on the folder: each name is either locked by a live process or holds another process's writes.
MAX_FILES = 100
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: bytes as written, no newline translation


@dataclass(frozen=True)
class ArtifactOp:
    """One change to a run's artifacts: store a staged file (``put``: ``path`` is the staged local file, kept
    under ``save_dir`` until the store has it), remove an artifact (``delete``: ``path`` is the artifact path), or
    log a model (``model``: ``path`` is the staged model folder, ``details`` what the logged model and its
    registration carry; see ``delivery.logged_models``)."""

    kind: Literal["put", "delete", "model"]
    path: str
    artifact_dir: str | None = None
    details: Mapping[str, Any] | None = None

    def to_json(self) -> list[Any]:
        data: list[Any] = [self.kind, self.path, self.artifact_dir]
        return data if self.details is None else [*data, dict(self.details)]

    @classmethod
    def from_json(cls, data: Any) -> ArtifactOp:
        kind, path, artifact_dir, *rest = data
        if kind not in ("put", "delete", "model") or len(rest) > 1:
            raise ValueError(f"not an artifact change: {data!r}")
        details = rest[0] if rest else None
        if details is not None and not isinstance(details, dict):
            raise ValueError(f"not an artifact change: {data!r}")
        return cls(kind, str(path), None if artifact_dir is None else str(artifact_dir), details)

    def describe(self) -> str:
        if self.kind == "delete":
            return f"delete {self.path}"
        if self.kind == "model":
            return f"log model {(self.details or {}).get('name', '?')}"
        return f"upload {self.artifact_dir or '.'}/{os.path.basename(self.path)}"


@dataclass
class Record:
    """One unit of work: metric points, params, tags, a run status, or a change to the run's artifacts."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: list[KeyValue] = field(default_factory=list)
    tags: list[KeyValue] = field(default_factory=list)
    status: str | None = None
    end_time: int | None = None
    artifact: ArtifactOp | None = None
    #: Dataset inputs: each the dataset's fields and its split as ``context`` (``lineage.dataset_records``).
    inputs: list[dict[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        extra = (1 if self.status else 0) + (1 if self.artifact else 0)
        return len(self.metrics) + len(self.params) + len(self.tags) + len(self.inputs) + extra

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
        if self.artifact:
            data["a"] = self.artifact.to_json()
        if self.inputs:
            data["i"] = self.inputs
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        """Raises ValueError, TypeError or KeyError for a line that is not a whole record."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"not a record: {line[:80]!r}")
        status = data.get("s") or [None, None]
        return cls(
            metrics=[(str(k), float(v), int(ts), int(step)) for k, v, ts, step in data.get("m", [])],
            params=[(str(k), str(v)) for k, v in data.get("p", [])],
            tags=[(str(k), str(v)) for k, v in data.get("t", [])],
            status=status[0],
            end_time=status[1],
            artifact=ArtifactOp.from_json(data["a"]) if "a" in data else None,
            inputs=[{str(k): str(v) for k, v in item.items()} for item in data.get("i", [])],
        )


def journal_path(save_dir: str | os.PathLike[str], run_id: str) -> Path:
    return Path(save_dir) / JOURNAL_DIR / f"{run_id}{SUFFIX}"


def find_journals(path: str | os.PathLike[str]) -> list[Path]:
    """Journal files at ``path``: the file itself, or every journal below a folder (a ``save_dir``).

    A run may have several: ``<run_id>.jsonl``, and ``<run_id>.<pid>.jsonl`` written by a process that found
    the first one in use. Each run's own file comes first.
    """
    root = Path(path)
    if root.is_file():
        return [root]
    found = [p for p in root.rglob(f"*{SUFFIX}") if p.parent.name == JOURNAL_DIR]
    return sorted(found, key=lambda p: (str(p.parent), p.name.split(".")[0], p.name.count("."), p.name))


@dataclass
class Header:
    run_id: str
    tracking_uri: str


class Journal:
    """A FIFO of records in a file: appended at the end, read from a cursor, emptied when all is delivered.

    One process at a time: while an instance holds the file open (from its first append, or from
    ``open_existing``, until ``prepend`` parks it, ``close()``, or the last record is delivered) it holds an
    exclusive ``flock`` on it. A second process, or a second instance, that finds the file locked, or holding
    writes someone else parked there, keeps its own writes in ``<run_id>.<pid>.jsonl`` beside it;
    ``lightning-mlflow sync`` replays every file once. ``open_existing`` refuses a file a live process holds
    (``JournalInUseError``). A parked file holds exactly the writes not delivered yet.

    Faults never reach the caller, which is the writer's thread or the training thread:

    - A line that does not parse (a process killed mid-write) is skipped, counted in ``skipped_lines`` and
      logged once with the file and line number; the other records are replayed.
    - A disk that refuses writes (full, read-only, a ``save_dir`` that is a file, a file size limit): the
      writer keeps in memory what it can, up to its cap; records this journal can't write are lost, their
      points counted in ``lost_points``, and one warning per cause says so. ``problem`` holds the last cause.
    """

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        self.lost_points = 0
        self.skipped_lines = 0
        self._home = path  # where a new file of this journal starts; self.path moves to a sibling if it's taken
        self._lock = threading.Lock()
        self._fd: int | None = None  # open and flock-ed while this instance uses the file
        self._parked: os.stat_result | None = None  # the file as this instance left it at its last park
        self._start = 0  # byte offset of the first record (just past the header)
        self._cursor = 0  # byte offset of the first record not yet delivered
        self._pending = 0  # records after the cursor
        self._pending_points = 0
        #: Points this journal stopped holding because another process (``lightning-mlflow sync``) took its file
        #: over: delivered from there, so a writer counts them done.
        self.handed_over_points = 0
        # Offsets move when the file is rewritten or changes hands: a peek from before then can't be advanced.
        self._generation = 0
        self._peeked: tuple[int, int, int, int] | None = None  # generation, end offset, records, points
        self._skipped_at: set[int] = set()
        self._needs_newline = False  # the file ends in a cut line this process could not terminate yet
        self._problem: str | None = None
        self._warn_once = WarnOnce(log)

    def __del__(self) -> None:
        # A journal dropped without close() must not keep its file locked until the process exits.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            _close_quietly(fd)

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        """The journal a process left at ``path``, locked for this one until delivered, parked or closed.

        Raises JournalInUseError while a live process holds it, JournalCorruptError if its first line is not
        a journal header, FileNotFoundError if it is gone (delivered by someone else).
        """
        path = Path(path)
        fd = _open_locked(path, create=False)
        if fd is None:
            raise JournalInUseError(_in_use_message(path))
        try:
            journal = cls(path, _read_header(path))
            journal._fd = fd
            journal._adopt()
        except BaseException:
            os.close(fd)
            raise
        return journal

    @classmethod
    def for_run(cls, path: Path, header: Header) -> Journal:
        """The journal a new writer of a run should use: the one an earlier process left at ``path`` (replayed
        first), else a new one, which goes to a sibling file if ``path`` is in use or unreadable."""
        try:
            return cls.open_existing(path)
        except FileNotFoundError:
            pass
        except JournalInUseError as exc:
            log.info("%s", exc)
        except (JournalCorruptError, OSError) as exc:
            log.warning("%s", exc)
        return cls(path, header)

    # ---- state --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def pending_points(self) -> int:
        return self._pending_points

    @property
    def exists(self) -> bool:
        """The file is on disk and holds at least one record to deliver: only then may a message name it."""
        return self._pending > 0 and self.path.exists()

    @property
    def problem(self) -> str | None:
        """Why the journal could not keep or read writes, the last time it could not; None if it always could."""
        return self._problem

    # ---- the writer's operations --------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        data = "".join(record.to_json() + "\n" for record in records).encode()
        points = sum(record.size for record in records)
        with self._lock:
            try:
                self._write(data)
            except OSError as exc:
                self._lose(points, exc)
                return
            self._pending += len(records)
            self._pending_points += points

    def peek(self, limit: int) -> tuple[list[Record], int]:
        """Up to ``limit`` records from the cursor, and the offset just past them. A group ends after an artifact
        change: it is made once, so it is marked delivered on its own (a group cut short is sent again whole,
        and a delete made again could remove a newer file put there since)."""
        with self._lock:
            records: list[Record] = []
            end = self._cursor
            points = 0
            try:
                if not self._pending or not self._hold():
                    return records, end
                for record, past in self._records(self._cursor):
                    records.append(record)
                    end = past
                    points += record.size
                    if len(records) >= limit or record.artifact is not None:
                        break
            except OSError as exc:
                self._cannot_read(exc)
                return [], self._cursor
            if not records:  # what the count said was left did not parse after all: nothing is left to deliver
                self._pending = self._pending_points = 0
                self._remove()
            self._peeked = (self._generation, end, len(records), points)
            return records, end

    def advance(self, count: int, offset: int) -> None:
        """Mark ``count`` records up to ``offset`` delivered; remove the file once nothing is left."""
        with self._lock:
            peeked, self._peeked = self._peeked, None
            if self._fd is None or peeked is None or peeked[0] != self._generation:
                return  # the file changed hands since the peek: its new owner delivers what is left
            points = peeked[3]
            if peeked[1:3] != (offset, count):  # not what was peeked: count what is really up to the offset
                try:
                    points = sum(record.size for record, end in self._records(self._cursor) if end <= offset)
                except OSError as exc:
                    self._cannot_read(exc)
                    return
            self._cursor = offset
            self._pending -= count
            self._pending_points -= points
            if self._pending <= 0:
                self._pending = self._pending_points = 0
                self._remove()

    def prepend(self, records: list[Record]) -> None:
        """Put records that are older than everything in the journal in front of it (the writer parks: a stage
        ended, or the store is down).

        When this returns the file is on disk (fsynced), holds exactly the writes not delivered yet, and is
        unlocked until this journal is used again (``lightning-mlflow sync`` may take it meanwhile).
        """
        with self._lock:
            try:
                if records or (self._fd is not None and self._cursor > self._start):
                    self._rewrite(records)
                elif self._fd is not None:
                    os.fsync(self._fd)
            except OSError as exc:
                self._lose(sum(record.size for record in records), exc)
            self._release()

    def close(self) -> None:
        """Let go of the file (lock and handle): what is still pending stays in it for a later process or sync."""
        self.prepend([])

    # ---- the file -----------------------------------------------------------------------------

    def _header_line(self) -> bytes:
        return (json.dumps({"journal": FORMAT_VERSION, **self.header.__dict__}) + "\n").encode()

    def _write(self, data: bytes) -> None:
        """Append whole lines, or nothing: a write the disk cuts short is taken back."""
        if not self._hold():
            self._create()
        assert self._fd is not None
        fd = self._fd
        start = os.fstat(fd).st_size
        if start == 0:  # a file this instance just created: its header goes in the same write as its records
            header = self._header_line()
            data = header + data
            self._start = self._cursor = len(header)
        elif self._needs_newline:
            data = b"\n" + data
        try:
            _write_all(fd, data)
        except OSError:
            self._take_back(start)
            raise
        self._needs_newline = False

    def _take_back(self, start: int) -> None:
        """Cut the file back to ``start`` bytes after a failed write, so no record is half on disk."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
        except OSError:  # a device (/dev/full) or a broken disk: the next record must not continue the cut one
            self._needs_newline = start > 0
            return
        if start == 0 and stat.S_ISREG(os.fstat(self._fd).st_mode):
            # An empty file would stop the next process on this save_dir (no header): leave no file instead.
            self._remove()

    def _create(self) -> None:
        """Lock a new, empty file for this journal: its own name, else a sibling named after this process."""
        self._home.parent.mkdir(parents=True, exist_ok=True)
        reason = ""
        for candidate in self._candidates():
            fd = _open_locked(candidate, create=True)
            if fd is None:
                reason = reason or f"The MLflow journal {candidate} is being written by {_holder(candidate)}"
                continue
            if os.fstat(fd).st_size == 0:
                break
            os.close(fd)  # a file another process parked, or left when it died: its writes are its own to deliver
            reason = reason or f"The MLflow journal {candidate} holds writes another process left there"
        else:
            raise OSError(errno.EBUSY, f"{MAX_FILES} journal files of run {self.header.run_id} are all in use")
        if candidate != self._home:
            log.info("%s; this process keeps its undelivered writes in %s", reason, candidate)
        self.path, self._fd = candidate, fd
        self._reset(cursor=0)

    def _candidates(self) -> Iterator[Path]:
        folder, run, pid = self._home.parent, self.header.run_id, os.getpid()
        names = [self._home.name, f"{run}.{pid}{SUFFIX}"] + [f"{run}.{pid}.{n}{SUFFIX}" for n in range(2, MAX_FILES)]
        for name in dict.fromkeys(names):
            yield folder / name

    def _hold(self) -> bool:
        """Hold this journal's file again after a park; False if no file holds writes of this journal."""
        if self._fd is not None:
            return True
        if not self._pending:
            return False
        try:
            fd = _open_locked(self.path, create=False)
        except FileNotFoundError:
            fd = None
        if fd is None:
            log.info(
                "The MLflow journal %s was taken over by another process (lightning-mlflow sync): "
                "the writes in it are delivered from there",
                self.path,
            )
            self._forget()
            return False
        self._fd = fd
        now = os.fstat(fd)
        if not (self._parked and os.path.samestat(now, self._parked) and now.st_size == self._parked.st_size):
            self._adopt()  # another process delivered part of it and parked it: the rest is still to deliver
        self._parked = None
        return True

    def _adopt(self) -> None:
        """Count the records in the locked file as this journal's pending writes; end a cut last line."""
        before = self._pending_points
        self._reset(cursor=0)
        self._pending = self._pending_points = 0
        with self.path.open("rb") as handle:
            self._start = self._cursor = offset = len(handle.readline())
            for number, raw in enumerate(handle, start=2):
                if not raw.endswith(b"\n"):
                    self._skip(offset, number)
                    self._needs_newline = True
                    break
                record = self._parse(offset, raw, number)
                offset += len(raw)
                if record is not None:
                    self._pending += 1
                    self._pending_points += record.size
        # What another process delivered from this file meanwhile is no longer this journal's to deliver.
        self.handed_over_points += max(before - self._pending_points, 0)
        if self._needs_newline:
            # This process's records must start on a line of their own, or the cut one would swallow the first.
            try:
                assert self._fd is not None
                _write_all(self._fd, b"\n")
                self._needs_newline = False
            except OSError:
                pass  # a read-only copy being synced: the next append writes it first

    def _rewrite(self, front: list[Record]) -> None:
        """Write ``front`` and the records not delivered yet to a new file that replaces this one, fsynced."""
        front_points = sum(record.size for record in front)
        if not self._pending or not self._hold():  # nothing of this journal on disk: a file of its own
            self._write("".join(record.to_json() + "\n" for record in front).encode())
            self._pending, self._pending_points = len(front), front_points
            assert self._fd is not None
            os.fsync(self._fd)
            return
        rest = [record for record, _ in self._records(self._cursor)]
        header = self._header_line()
        data = header + b"".join(record.to_json().encode() + b"\n" for record in front)
        data += b"".join(record.to_json().encode() + b"\n" for record in rest)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | _BINARY, 0o644)
        try:
            _try_lock(fd)  # nobody takes the new file before this process lets go of it
            _write_all(fd, data)
            os.fsync(fd)
            if fcntl is None:  # Windows can't rename over an open file; with no locks there is nothing to keep
                os.close(fd)
                self._close_fd()
            os.replace(tmp, self.path)
        except BaseException:
            _close_quietly(fd)
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(self.path.parent)
        self._close_fd()
        self._fd = fd if fcntl is not None else _open_locked(self.path, create=False)
        self._reset(cursor=len(header))
        self._start = len(header)
        self._pending = len(front) + len(rest)
        self._pending_points = front_points + sum(record.size for record in rest)

    def _release(self) -> None:
        if self._fd is None:
            return
        if not self._pending:
            self._remove()
            return
        self._parked = os.fstat(self._fd)
        self._close_fd()

    def _remove(self) -> None:
        """Delete the file (everything in it is delivered) and let go of it."""
        # Never a device the journal was pointed at (/dev/full in a test): only a file this journal wrote.
        if self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode):
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only copy: a later sync sends its writes again, storing nothing twice
                self._warn_once(
                    f"remove:{exc.errno}", f"Cannot remove the delivered MLflow journal {self.path} ({exc})"
                )
        self._close_fd()
        self._parked = None
        self._reset(cursor=0)

    def _close_fd(self) -> None:
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None

    def _forget(self) -> None:
        """Another process owns the file now, with the writes in it: start afresh at this journal's own name."""
        self._close_fd()
        self._parked = None
        self.handed_over_points += self._pending_points
        self._pending = self._pending_points = 0
        self.path = self._home
        self._reset(cursor=0)

    def _reset(self, cursor: int) -> None:
        """Offsets are those of another file from now on."""
        self._cursor = cursor
        self._generation += 1
        self._peeked = None
        self._skipped_at.clear()
        self._needs_newline = False

    # ---- reading ------------------------------------------------------------------------------

    def _lines(self, start: int) -> Iterator[tuple[int, bytes]]:
        """Each whole line from byte ``start`` on, with the offset it starts at. A last line without its
        newline was cut by a crash (``_adopt`` counted it): it is no record."""
        with self.path.open("rb") as handle:
            handle.seek(start)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                yield start, raw
                start += len(raw)

    def _records(self, start: int) -> Iterator[tuple[Record, int]]:
        """Each record from byte ``start`` on, with the offset just past it; lines that don't parse are skipped."""
        for offset, raw in self._lines(start):
            record = self._parse(offset, raw)
            if record is not None:
                yield record, offset + len(raw)

    def _parse(self, offset: int, raw: bytes, number: int | None = None) -> Record | None:
        if not raw.strip():
            return None  # an empty line holds no write
        try:
            return Record.from_json(raw.decode("utf-8"))
        except (ValueError, TypeError, KeyError):
            self._skip(offset, number)
            return None

    def _skip(self, offset: int, number: int | None) -> None:
        if offset in self._skipped_at:
            return
        self._skipped_at.add(offset)
        self.skipped_lines += 1
        if number is None:
            with self.path.open("rb") as handle:
                number = handle.read(offset).count(b"\n") + 1
        log.warning(
            "Skipped line %d of the MLflow journal %s: it is not a whole record (a process was stopped while "
            "writing it); the other writes in the file are replayed",
            number,
            self.path,
        )

    # ---- faults -------------------------------------------------------------------------------

    def _lose(self, points: int, exc: OSError) -> None:
        self.lost_points += points
        self._problem = (
            f"Cannot write the MLflow journal at {self.path} ({exc.strerror or exc}): training goes on; writes "
            f"the tracking store has not taken are kept in memory up to the cap and {self.lost_points} points "
            "have been lost so far. Free space or choose a writable save_dir."
        )
        self._warn_once(f"write:{exc.errno}:{type(exc).__name__}", self._problem)

    def _cannot_read(self, exc: OSError) -> None:
        self._problem = (
            f"Cannot read the MLflow journal at {self.path} ({exc.strerror or exc}): the writes in it stay there; "
            f"run `lightning-mlflow sync {self.path}` once it can be read."
        )
        self._warn_once(f"read:{exc.errno}", self._problem)


# ---- files and locks --------------------------------------------------------------------------


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on an open file without waiting; False if another open file holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (some NFS mounts): go on unlocked, as on Windows
        return True
    return True


def _open_locked(path: Path, *, create: bool) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock; None while another open file holds it.

    The name is checked again once locked: a file another process removed or replaced in the meantime is not
    the journal any more, and what this process wrote to it would be lost.
    """
    for _ in range(MAX_FILES):
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | _BINARY | (os.O_CREAT if create else 0), 0o644)
        except OSError as exc:
            if create or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fd = os.open(path, os.O_RDONLY | _BINARY)  # a read-only copy can still be replayed
        if not _try_lock(fd):
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def _holder(path: Path) -> str:
    """Who holds the lock on ``path``, for a message."""
    pid = _lock_owner(path)
    if pid == os.getpid():
        return f"this process (pid {pid}), for another logger of the same run"
    return f"process {pid}" if pid else "another process"


def _lock_owner(path: Path) -> int | None:
    """The process holding the flock on ``path``, when Linux's lock table says."""
    if fcntl is None:
        return None
    try:
        where = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f":{where.st_ino}"
    device = f"{os.major(where.st_dev):02x}:{os.minor(where.st_dev):02x}{inode}"
    on_inode: set[int] = set()
    for line in table.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5308747 0 EOF" ("->" marks a waiter)
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[4].isdigit():
            continue
        if fields[5] == device:
            return int(fields[4])
        if fields[5].endswith(inode):
            on_inode.add(int(fields[4]))
    # An overlay file system (containers) puts the device below it in the table: the inode alone then decides.
    return on_inode.pop() if len(on_inode) == 1 else None


def _in_use_message(path: Path) -> str:
    return f"The MLflow journal {path} is being written by {_holder(path)}; run lightning-mlflow sync after it exits"


def _read_header(path: Path) -> Header:
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise JournalCorruptError(
            f"The MLflow journal {path} is empty (a process was stopped while creating it): it holds no writes; "
            "delete it"
        )
    try:
        data = json.loads(first)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("journal"), int) and data["journal"] > FORMAT_VERSION:
        raise JournalCorruptError(
            f"The MLflow journal {path} was written by a newer lightning-mlflow-ext (journal format "
            f"{data['journal']}); sync it with that version"
        )
    if (
        not first.endswith(b"\n")
        or not isinstance(data, dict)
        or not isinstance(data.get("run_id"), str)
        or not isinstance(data.get("tracking_uri"), str)
    ):
        raise JournalCorruptError(
            f"The MLflow journal {path} does not start with a journal header (line 1: {first[:80]!r}), so there is "
            f"no telling which run its writes belong to; move it out of {path.parent}"
        )
    return Header(run_id=data["run_id"], tracking_uri=data["tracking_uri"])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # closing only lets go of the lock; write errors were reported by the write
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable: the folder's entry, not only the file, must reach the disk."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder can't be opened, and renames are journaled by NTFS
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is on disk
    finally:
        os.close(fd)
