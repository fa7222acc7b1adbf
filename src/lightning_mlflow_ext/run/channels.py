"""The writer and the uploader that carry one run's records to ``delivery``, and the end-of-stage wait for them.

The session opens them on first use; everything here is given the run id (``delivery`` knows no resolution).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mlflow import MlflowClient

from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts
from lightning_mlflow_ext.delivery.journal import Header, Journal, journal_path
from lightning_mlflow_ext.delivery.transport import make_transport
from lightning_mlflow_ext.delivery.uploader import ArtifactUploader
from lightning_mlflow_ext.delivery.writer import DeliveryReport, RunWriter
from lightning_mlflow_ext.run.heartbeat import HEARTBEAT_INTERVAL, heartbeat
from lightning_mlflow_ext.run.tags import HEARTBEAT_TAG

log = logging.getLogger(__name__)

#: Of the end-of-run wait, what is kept for putting undelivered writes in the journal.
PARK_RESERVE_S = 1.0
#: Where files wait for the uploader, under save_dir, until the store has them.
STAGING_DIR = ".mlflow-uploads"


def has_journal(save_dir: str, run_id: str) -> bool:
    """An earlier process on this save_dir left writes of this run undelivered."""
    return journal_path(save_dir, run_id).exists()


def run_journal(save_dir: str, run_id: str, tracking_uri: str) -> Journal:
    """This run's journal; one left by an earlier process on the same save_dir is replayed first."""
    path = journal_path(save_dir, run_id)
    if path.exists():
        log.info("Replaying undelivered writes of MLflow run %s from %s", run_id, path)
    return Journal.for_run(path, Header(run_id=run_id, tracking_uri=tracking_uri))


def open_writer(
    client: MlflowClient, tracking_uri: str, run_id: str, save_dir: str, artifact_uri: str | None, synchronous: bool
) -> RunWriter:
    """The run's writer: metrics, params, tags, status and journaled artifact changes, with the heartbeat."""
    return RunWriter(
        make_transport(tracking_uri, client),
        run_id,
        run_journal(save_dir, run_id, tracking_uri),
        synchronous=synchronous,
        heartbeat=lambda: [(HEARTBEAT_TAG, heartbeat())],
        heartbeat_interval=HEARTBEAT_INTERVAL,
        artifacts=RunArtifacts(client, run_id, tracking_uri, artifact_uri),
    )


def open_uploader(
    client: MlflowClient, tracking_uri: str, run_id: str, save_dir: str, artifact_uri: str | None, writer: RunWriter
) -> ArtifactUploader:
    """Background uploads into the run; what it cannot store becomes ``writer``'s records."""
    # Its own RunArtifacts: a connection serves one thread, and the writer's serves journaled changes.
    artifacts = RunArtifacts(client, run_id, tracking_uri, artifact_uri)
    return ArtifactUploader(run_id, artifacts, Path(save_dir) / STAGING_DIR, hand_off=writer.change_artifacts)


def deliver_by(writer: RunWriter, deadline: float, *, at_exit: bool) -> DeliveryReport:
    """Wait for delivery until ``deadline`` (``time.monotonic()``), then put what is left in the journal; the
    last ``PARK_RESERVE_S`` of the wait are kept for that. At exit, an unreachable store is not waited for."""
    budget = max(deadline - time.monotonic() - PARK_RESERVE_S, 0.0)
    report = writer.flush(budget, unless_unreachable=at_exit)
    if report.pending:
        parked = writer.park(max(deadline - time.monotonic(), 0.1))
        report.pending, report.journal, report.lost = parked.pending, parked.journal, parked.lost
        report.halted = report.halted or parked.halted
    return report
