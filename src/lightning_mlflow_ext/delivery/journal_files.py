"""The files under a journal: where they are, who holds them (``flock``), reading records back, and writes
that survive a crash.

Plain functions on paths and descriptors; ``journal.Journal`` decides what goes in them and when.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lightning_mlflow_ext.delivery.records import FORMAT_VERSION, Header, Record
from lightning_mlflow_ext.errors import JournalCorruptError

try:
    import fcntl
except ImportError:  # Windows has no flock: no locking there, one process per save_dir is the user's to ensure
    fcntl = None  # type: ignore[assignment]

JOURNAL_DIR = "mlflow-journal"
SUFFIX = ".jsonl"
#: Files one journal tries (its own name, then ``<run_id>.<pid>.jsonl``, ``<run_id>.<pid>.2.jsonl``...) before
#: it gives up on the folder: each name is either locked by a live process or holds another process's writes.
MAX_FILES = 100
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: bytes as written, no newline translation


# ---- where journals are ---------------------------------------------------------------------------


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


def _candidates(home: Path, run_id: str) -> Iterator[Path]:
    folder, pid = home.parent, os.getpid()
    names = [home.name, f"{run_id}.{pid}{SUFFIX}"] + [f"{run_id}.{pid}.{n}{SUFFIX}" for n in range(2, MAX_FILES)]
    for name in dict.fromkeys(names):
        yield folder / name


def claim_new_file(home: Path, run_id: str) -> tuple[Path, int, str]:
    """Lock a new, empty journal file: ``home``, else a sibling named after this process. Returns its path, its
    locked descriptor, and why ``home`` was not used ("" if it was)."""
    home.parent.mkdir(parents=True, exist_ok=True)
    reason = ""
    for candidate in _candidates(home, run_id):
        fd = open_locked(candidate, create=True)
        if fd is None:
            reason = reason or f"The MLflow journal {candidate} is being written by {holder(candidate)}"
            continue
        if os.fstat(fd).st_size == 0:
            return candidate, fd, reason
        os.close(fd)  # a file another process parked, or left when it died: its writes are its own to deliver
        reason = reason or f"The MLflow journal {candidate} holds writes another process left there"
    raise OSError(errno.EBUSY, f"{MAX_FILES} journal files of run {run_id} are all in use")


# ---- locks --------------------------------------------------------------------------------------


def try_lock(fd: int) -> bool:
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


def open_locked(path: Path, *, create: bool) -> int | None:
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
        if not try_lock(fd):
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def holder(path: Path) -> str:
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


def in_use_message(path: Path) -> str:
    return f"The MLflow journal {path} is being written by {holder(path)}; run lightning-mlflow sync after it exits"


# ---- reading --------------------------------------------------------------------------------------


def read_header(path: Path) -> Header:
    """The header on the first line of the journal at ``path``; JournalCorruptError if there is none."""
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


def whole_lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """Each whole line from byte ``start`` on, with the offset it starts at. A last line without its newline was
    cut by a crash: it is no record."""
    with path.open("rb") as handle:
        handle.seek(start)
        for raw in handle:
            if not raw.endswith(b"\n"):
                return
            yield start, raw
            start += len(raw)


class RecordReader:
    """Records read back from journal files. A line that does not parse (a process was stopped while writing it)
    is skipped, counted in ``skipped_lines`` and reported once, with the file and line number, on ``log``."""

    def __init__(self, log: logging.Logger) -> None:
        self.skipped_lines = 0
        self._log = log
        self._skipped_at: set[int] = set()

    def new_file(self) -> None:
        """Offsets are those of another file from now on."""
        self._skipped_at.clear()

    def count(self, path: Path) -> tuple[int, int, int, bool]:
        """What the journal file at ``path`` holds: the offset its records start at (past the header), how many
        there are, their points, and whether its last line was cut (no newline)."""
        records = points = 0
        with path.open("rb") as handle:
            start = offset = len(handle.readline())
            for number, raw in enumerate(handle, start=2):
                if not raw.endswith(b"\n"):
                    self._skip(path, offset, number)
                    return start, records, points, True
                record = self._parse(path, offset, raw, number)
                offset += len(raw)
                if record is not None:
                    records += 1
                    points += record.size
        return start, records, points, False

    def records(self, path: Path, start: int) -> Iterator[tuple[Record, int]]:
        """Each record from byte ``start`` on, with the offset just past it; lines that don't parse are skipped."""
        for offset, raw in whole_lines(path, start):
            record = self._parse(path, offset, raw)
            if record is not None:
                yield record, offset + len(raw)

    def _parse(self, path: Path, offset: int, raw: bytes, number: int | None = None) -> Record | None:
        if not raw.strip():
            return None  # an empty line holds no write
        try:
            return Record.from_json(raw.decode("utf-8"))
        except (ValueError, TypeError, KeyError):
            self._skip(path, offset, number)
            return None

    def _skip(self, path: Path, offset: int, number: int | None) -> None:
        if offset in self._skipped_at:
            return
        self._skipped_at.add(offset)
        self.skipped_lines += 1
        if number is None:
            with path.open("rb") as handle:
                number = handle.read(offset).count(b"\n") + 1
        self._log.warning(
            "Skipped line %d of the MLflow journal %s: it is not a whole record (a process was stopped while "
            "writing it); the other writes in the file are replayed",
            number,
            path,
        )


# ---- writing ------------------------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_locked(path: Path, data: bytes, let_go: Callable[[], None]) -> int | None:
    """Replace the file at ``path`` by one holding ``data``, durably (written, fsynced, renamed over it, the folder
    fsynced), and return a descriptor holding the new file's lock. ``let_go`` closes the caller's descriptor of
    the old file: after the rename, or before it on Windows, which can't rename over an open file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | _BINARY, 0o644)
    try:
        try_lock(fd)  # nobody takes the new file before this process lets go of it
        write_all(fd, data)
        os.fsync(fd)
        if fcntl is None:  # with no locks there is nothing to keep by holding the files open
            os.close(fd)
            let_go()
        os.replace(tmp, path)
    except BaseException:
        close_quietly(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    let_go()
    return fd if fcntl is not None else open_locked(path, create=False)


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # closing only lets go of the lock; write errors were reported by the write
        os.close(fd)


def fsync_folder(folder: Path) -> None:
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
