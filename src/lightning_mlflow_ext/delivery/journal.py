"""On-disk journal of writes a run has not delivered yet: one JSON-lines file per run under ``save_dir``.

Points keep the timestamp they were queued with, so replaying a journal twice stores nothing twice.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from lightning_mlflow_ext.delivery.journal_files import (
    RecordReader,
    claim_new_file,
    close_quietly,
    find_journals,
    in_use_message,
    journal_path,
    open_locked,
    read_header,
    replace_locked,
    write_all,
)
from lightning_mlflow_ext.delivery.records import Header, Record, to_lines
from lightning_mlflow_ext.errors import JournalCorruptError, JournalInUseError
from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)

#: The journal's names its callers use (``journal_path``, ``find_journals``: where a run's journal files are).
__all__ = ["Header", "Journal", "Record", "find_journals", "journal_path"]


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

    def __init__(self, path: Path, header: Header, *, held: int | None = None) -> None:
        """A journal of ``header``'s run at ``path``. ``held``: a descriptor already holding the lock on a file
        left at ``path`` (``open_existing``), whose records become this journal's pending writes."""
        self.path = path
        self.header = header
        self.lost_points = 0
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
        self._reader = RecordReader(log)  # skipped lines are reported under this module's name
        self._needs_newline = False  # the file ends in a cut line this process could not terminate yet
        self._problem: str | None = None
        self._warn_once = WarnOnce(log)
        if held is not None:
            self._fd = held
            try:
                self._adopt()
            except BaseException:
                self._close_fd()  # the lock goes with the file: nothing in it became this journal's
                raise

    def __del__(self) -> None:
        # A journal dropped without close() must not keep its file locked until the process exits.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            close_quietly(fd)

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        """The journal a process left at ``path``, locked for this one until delivered, parked or closed.

        Raises JournalInUseError while a live process holds it, JournalCorruptError if its first line is not
        a journal header, FileNotFoundError if it is gone (delivered by someone else).
        """
        path = Path(path)
        fd = open_locked(path, create=False)
        if fd is None:
            raise JournalInUseError(in_use_message(path))
        try:
            header = read_header(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, header, held=fd)

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
    def skipped_lines(self) -> int:
        """Lines that were not whole records (a process stopped while writing them), skipped and reported."""
        return self._reader.skipped_lines

    @property
    def problem(self) -> str | None:
        """Why the journal could not keep or read writes, the last time it could not; None if it always could."""
        return self._problem

    # ---- the writer's operations --------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        data = to_lines(records)
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
                for record, past in self._reader.records(self.path, self._cursor):
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
                    points = sum(
                        record.size for record, end in self._reader.records(self.path, self._cursor) if end <= offset
                    )
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

    def _write(self, data: bytes) -> None:
        """Append whole lines, or nothing: a write the disk cuts short is taken back."""
        if not self._hold():
            self._create()
        assert self._fd is not None
        fd = self._fd
        start = os.fstat(fd).st_size
        if start == 0:  # a file this instance just created: its header goes in the same write as its records
            header = self.header.to_line()
            data = header + data
            self._start = self._cursor = len(header)
        elif self._needs_newline:
            data = b"\n" + data
        try:
            write_all(fd, data)
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
        candidate, fd, reason = claim_new_file(self._home, self.header.run_id)
        if candidate != self._home:
            log.info("%s; this process keeps its undelivered writes in %s", reason, candidate)
        self.path, self._fd = candidate, fd
        self._reset(cursor=0)

    def _hold(self) -> bool:
        """Hold this journal's file again after a park; False if no file holds writes of this journal."""
        if self._fd is not None:
            return True
        if not self._pending:
            return False
        try:
            fd = open_locked(self.path, create=False)
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
        self._pending = self._pending_points = 0  # a file that cannot be read holds nothing this journal counts
        self._start, self._pending, self._pending_points, self._needs_newline = self._reader.count(self.path)
        self._cursor = self._start
        # What another process delivered from this file meanwhile is no longer this journal's to deliver.
        self.handed_over_points += max(before - self._pending_points, 0)
        if self._needs_newline:
            # This process's records must start on a line of their own, or the cut one would swallow the first.
            try:
                assert self._fd is not None
                write_all(self._fd, b"\n")
                self._needs_newline = False
            except OSError:
                pass  # a read-only copy being synced: the next append writes it first

    def _rewrite(self, front: list[Record]) -> None:
        """Write ``front`` and the records not delivered yet to a new file that replaces this one, fsynced."""
        front_points = sum(record.size for record in front)
        if not self._pending or not self._hold():  # nothing of this journal on disk: a file of its own
            self._write(to_lines(front))
            self._pending, self._pending_points = len(front), front_points
            assert self._fd is not None
            os.fsync(self._fd)
            return
        rest = [record for record, _ in self._reader.records(self.path, self._cursor)]
        header = self.header.to_line()
        self._fd = replace_locked(self.path, header + to_lines(front) + to_lines(rest), self._close_fd)
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
            close_quietly(self._fd)
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
        self._reader.new_file()
        self._needs_newline = False

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
