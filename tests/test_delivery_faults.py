"""Delivery at its edges: a request that never answers while the run ends, a journal another process synced,
artifact changes replayed one at a time, and the faults of cloud artifact stores and busy databases."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import botocore.exceptions
import pytest
from mlflow import MlflowClient

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.delivery.faults import Fault, classify_exception, classify_response
from lightning_mlflow_ext.delivery.journal import Header, Journal, Record, journal_path
from lightning_mlflow_ext.delivery.records import ArtifactOp
from lightning_mlflow_ext.delivery.transport import HttpTransport
from lightning_mlflow_ext.delivery.writer import RunWriter


class BlackHole:
    """A loopback server that accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self._held:
            conn.close()


def test_a_request_cut_off_at_the_end_of_a_run_is_journaled_not_sent_again(tmp_path):
    hole = BlackHole()
    try:
        path = journal_path(tmp_path, "r1")
        writer = RunWriter(HttpTransport(hole.uri, timeout=60), "r1", Journal(path, Header("r1", hole.uri)))
        writer.log_metrics([("loss", 0.5, 1_000, step) for step in range(800)])
        writer.flush(0.5)  # the batch is in flight, unanswered
        report = writer.park(2.0)
        assert report.pending == 800
        assert hole.connections == 1, "a request cut off on purpose is not retried on a new connection"
        assert Journal.open_existing(path).pending_points() == 800, "the batch in flight is in the journal too"
    finally:
        hole.close()


def sync(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_mlflow_ext.commands", "sync", str(path), "--timeout", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_after_sync_delivered_its_journal_the_logger_flushes_what_is_new(fault_proxy, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=fault_proxy.uri, flush_timeout=2)
    run_id = logger.run_id
    fault_proxy.refuse()
    logger.log_metrics({"loss": 1.0}, step=0)
    assert logger.flush(timeout=2) == 1
    logger.finalize("success")  # the store is down: the point and the status go to the journal
    assert journal_path(logger.save_dir, run_id).exists()

    fault_proxy.accept()
    delivered = sync(Path(logger.save_dir))  # as the warning says to
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    logger.log_metrics({"loss": 0.5}, step=1)  # the process goes on (a notebook)
    assert logger.flush(timeout=30) == 0, "nothing is left to wait for: sync delivered the journal"
    steps = [point.step for point in MlflowClient(fault_proxy.upstream).get_metric_history(run_id, "loss")]
    assert sorted(steps) == [0, 1]


def test_artifact_changes_are_replayed_one_at_a_time(tmp_path):
    """A delete is marked delivered on its own: a group cut short is not replayed over a newer put."""
    path = journal_path(tmp_path, "r1")
    journal = Journal(path, Header("r1", "sqlite:///x.db"))
    journal.append([
        Record(metrics=[("loss", 1.0, 1, 0)]),
        Record(artifact=ArtifactOp("put", str(tmp_path / "a" / "best.ckpt"), "checkpoints")),
        Record(artifact=ArtifactOp("delete", "checkpoints/best.ckpt")),
        Record(metrics=[("loss", 0.5, 2, 1)]),
    ])  # fmt: skip
    groups = []
    while True:
        records, offset = journal.peek(200)
        if not records:
            break
        groups.append([("artifact" if r.artifact else "metrics") for r in records])
        journal.advance(len(records), offset)
    assert groups == [["metrics", "artifact"], ["artifact"], ["metrics"]]


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.example"), Fault.TRANSIENT),
        (
            botocore.exceptions.ClientError(
                {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
            ),
            Fault.TRANSIENT,
        ),
        (
            botocore.exceptions.ClientError(
                {"Error": {"Code": "ExpiredToken"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject"
            ),
            Fault.RUN_WIDE,
        ),
    ],
    ids=["s3-unreachable", "s3-slow-down", "s3-expired-token"],
)
def test_cloud_artifact_store_errors_are_classified_by_what_they_mean(error, fault):
    assert classify_exception("s3://bucket", error).fault is fault


def test_a_busy_database_behind_the_server_is_transient_not_a_refused_record():
    busy = '{"error_code": "BAD_REQUEST", "message": "(sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 reached"}'
    assert classify_response("u", 400, busy).fault is Fault.TRANSIENT
