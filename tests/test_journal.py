"""The journal under faults: cut lines, full or unwritable disks, two processes on one save_dir.

Every replay goes through the real `lightning-mlflow sync` into a real embedded SQLite store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lightning_mlflow_ext import commands
from lightning_mlflow_ext.delivery.journal import Header, Journal, Record, find_journals, journal_path
from lightning_mlflow_ext.errors import JournalCorruptError, JournalInUseError

T0 = 1_700_000_000_000  # a point's timestamp is T0 + step: the journal must keep it as queued
JOURNAL_LOG = "lightning_mlflow_ext.delivery.journal"


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment_id: str

    def new_run(self) -> str:
        return self.client.create_run(self.experiment_id).info.run_id

    def history(self, run_id: str, key: str) -> list[tuple[int, int]]:
        """(step, timestamp) of every point stored, asserting no step is stored twice."""
        points = [(p.step, p.timestamp) for p in self.client.get_metric_history(run_id, key)]
        twice = [step for step, n in Counter(step for step, _ in points).items() if n > 1]
        assert not twice, f"{key}: steps stored twice: {twice}"
        return sorted(points)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = MlflowClient(uri)
    yield Store(uri, client, client.create_experiment("journal-faults"))


def point(key: str, step: int) -> Record:
    return Record(metrics=[(key, float(step), T0 + step, step)])


def sync(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert commands.main(["sync", str(path), "--timeout", "30"]) == 0
    return capsys.readouterr().out


def journal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == JOURNAL_LOG and r.levelno >= logging.WARNING]


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_rest_replayed(store, tmp_path, caplog, capsys):
    run_id = store.new_run()
    path = journal_path(tmp_path, run_id)
    first = Journal(path, Header(run_id, store.uri))
    first.append([point("loss", step) for step in range(10)])
    first.close()
    os.truncate(path, path.stat().st_size - 7)  # killed while writing step 9: line 11 is cut, no newline

    with caplog.at_level(logging.WARNING, logger=JOURNAL_LOG):
        later = Journal.open_existing(path)  # a later process on the same save_dir appends after it
        later.append([point("loss", step) for step in range(10, 15)])
        later.close()
    assert later.skipped_lines == 1
    [warning] = journal_warnings(caplog)
    assert "line 11 " in warning and str(path) in warning
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[11]) == {"m": [["loss", 10.0, T0 + 10, 10]]}, "the later records start on a fresh line"

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=JOURNAL_LOG):
        out = sync(path, capsys)
    assert "delivered 14 points" in out
    assert len(journal_warnings(caplog)) == 1, "the cut line is reported once by the replay too"
    expected = [*range(9), *range(10, 15)]
    assert store.history(run_id, "loss") == [(step, T0 + step) for step in expected]
    assert not path.exists()


CHILD_WRITER = """
import sys
from lightning_mlflow_ext.delivery.journal import Header, Journal, Record, journal_path
T0, (save_dir, run_id, uri) = int(sys.argv[1]), sys.argv[2:5]
journal = Journal(journal_path(save_dir, run_id), Header(run_id, uri))
for step in range(200):
    journal.append([Record(metrics=[("child", float(step), T0 + step, step)])])
    if step == 0:
        print(journal.path, flush=True)  # the test's own journal starts now, while this one goes on
sys.stdin.readline()
print(journal.pending, flush=True)
"""


def test_two_processes_never_share_a_journal_file(store, tmp_path, caplog, capsys):
    run_id = store.new_run()
    canonical = journal_path(tmp_path, run_id)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, str(T0), str(tmp_path), run_id, store.uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert Path(child.stdout.readline().strip()) == canonical
        with caplog.at_level(logging.INFO, logger=JOURNAL_LOG):
            mine = Journal(canonical, Header(run_id, store.uri))
            for step in range(100):
                mine.append([point("parent", step)])
        assert mine.path == canonical.with_name(f"{run_id}.{os.getpid()}.jsonl")
        assert any(
            str(mine.path) in r.getMessage() and f"process {child.pid}" in r.getMessage() for r in caplog.records
        ), "the fallback file is named in the log"
        with pytest.raises(JournalInUseError, match=f"being written by process {child.pid}"):
            Journal.open_existing(canonical)  # what `lightning-mlflow sync` does: refused while the child runs
        out, _ = child.communicate("\n", timeout=60)  # the child exits with its writes still in its file
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and out.strip() == "200"
    mine.close()

    assert find_journals(tmp_path) == [canonical, mine.path]
    for path in (canonical, mine.path):
        assert all(json.loads(line) for line in path.read_bytes().splitlines()), f"{path}: a line was interleaved"
    assert "delivered 200 points" in (out := sync(tmp_path, capsys)) and "delivered 100 points" in out
    assert store.history(run_id, "child") == [(step, T0 + step) for step in range(200)]
    assert store.history(run_id, "parent") == [(step, T0 + step) for step in range(100)]
    assert find_journals(tmp_path) == []
    assert "Nothing to deliver" in sync(tmp_path, capsys)


def test_a_parked_journal_holds_exactly_what_is_left_and_changes_hands(tmp_path):
    path = journal_path(tmp_path, "run")
    journal = Journal(path, Header("run", "sqlite:///unused.db"))
    journal.append([point("loss", step) for step in range(10)])
    with pytest.raises(JournalInUseError, match=f"pid {os.getpid()}"):
        Journal.open_existing(path)  # even another logger of this process waits while the writer holds it

    records, offset = journal.peek(4)
    journal.advance(len(records), offset)
    journal.prepend([])  # the writer parks: the file now holds only the 6 records not delivered
    assert len(path.read_bytes().splitlines()) == 1 + 6

    other = Journal.open_existing(path)  # a sync takes it over, delivers two, and times out
    records, offset = other.peek(2)
    assert [r.metrics[0][3] for r in records] == [4, 5]
    other.advance(len(records), offset)
    other.close()

    records, _ = journal.peek(100)  # the first writer resumes with what is left, nothing twice
    assert [r.metrics[0][3] for r in records] == [6, 7, 8, 9]
    assert journal.pending == 4 and journal.pending_points() == 4 and journal.exists


def test_a_journal_without_its_header_is_refused_by_name_and_not_written_into(tmp_path, caplog):
    path = journal_path(tmp_path, "run")
    path.parent.mkdir(parents=True)
    path.write_text('{"m":[["loss",1.0,1,1]]}\n')
    with pytest.raises(JournalCorruptError, match=re.escape(str(path))):
        Journal.open_existing(path)

    with caplog.at_level(logging.WARNING, logger=JOURNAL_LOG):
        journal = Journal.for_run(path, Header("run", "sqlite:///unused.db"))  # what a new logger does
        journal.append([point("loss", 2)])
    assert journal.path != path and journal.exists
    assert path.read_text() == '{"m":[["loss",1.0,1,1]]}\n'
    assert any(str(path) in message for message in journal_warnings(caplog))
    journal.close()


def test_a_full_disk_loses_points_counted_with_one_warning(tmp_path, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = journal_path(tmp_path, "run")
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    journal = Journal(path, Header("run", "sqlite:///unused.db"))
    with caplog.at_level(logging.WARNING, logger=JOURNAL_LOG):
        for step in range(3):
            journal.append([Record(metrics=[("loss", 1.0, T0, step), ("acc", 1.0, T0, step)])])
    [warning] = journal_warnings(caplog)
    assert f"Cannot write the MLflow journal at {path} (No space left on device)" in warning
    assert "2 points have been lost so far" in warning
    assert journal.lost_points == 6
    assert journal.problem is not None and "6 points have been lost so far" in journal.problem
    assert journal.pending == 0 and not journal.exists
    journal.close()


def test_a_save_dir_that_is_a_file_loses_points_counted_never_raises(tmp_path, caplog):
    save_dir = tmp_path / "save_dir"
    save_dir.write_text("a file where a folder should be")
    journal = Journal(journal_path(save_dir, "run"), Header("run", "sqlite:///unused.db"))
    with caplog.at_level(logging.WARNING, logger=JOURNAL_LOG):
        journal.append([point("loss", 0), point("loss", 1)])
        journal.prepend([point("loss", 2)])  # the writer parks with memory it can't keep either
    [warning] = journal_warnings(caplog)
    assert "(Not a directory)" in warning and "Free space or choose a writable save_dir" in warning
    assert journal.lost_points == 3 and not journal.exists
    assert journal.peek(10) == ([], 0)


CHILD_SIZE_LIMITED = """
import json, logging, resource, sys
from lightning_mlflow_ext.delivery.journal import Header, Journal, Record, journal_path
logging.basicConfig(level=logging.WARNING)
T0, (save_dir, run_id, uri) = int(sys.argv[1]), sys.argv[2:5]
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # writes past 4 KiB fail: EFBIG
journal = Journal(journal_path(save_dir, run_id), Header(run_id, uri))
for step in range(200):
    journal.append([Record(metrics=[("loss", float(step), T0 + step, step)])])
journal.close()
print(json.dumps({"path": str(journal.path), "pending": journal.pending, "lost": journal.lost_points}))
"""


def test_a_file_size_limit_keeps_whole_records_only_and_counts_the_rest_lost(store, tmp_path, capsys):
    run_id = store.new_run()
    child = subprocess.run(
        [sys.executable, "-c", CHILD_SIZE_LIMITED, str(T0), str(tmp_path), run_id, store.uri],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["pending"] + result["lost"] == 200 and result["lost"] > 0
    assert child.stderr.count("Cannot write the MLflow journal") == 1 and "(File too large)" in child.stderr
    path = Path(result["path"])
    lines = path.read_bytes().splitlines()
    assert path.stat().st_size <= 4096 and len(lines) == 1 + result["pending"]
    assert all(json.loads(line) for line in lines), "a write cut short by the limit was taken back"

    assert f"delivered {result['pending']} points" in sync(path, capsys)
    assert store.history(run_id, "loss") == [(step, T0 + step) for step in range(result["pending"])]
