"""Delivery when the tracking server goes away: nothing lost, nothing stored twice, one command to catch up.

These tests stop and restart the real session-wide `mlflow server`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.delivery.journal import Header, Journal, journal_path
from lightning_mlflow_ext.delivery.transport import HttpTransport, make_transport
from lightning_mlflow_ext.delivery.writer import RunWriter
from lightning_mlflow_ext.errors import WriteRefusedError

STEPS = 16  # 2 epochs x 8 batches


def server_outage(server, stop_at: int, start_at: int | None) -> TinyModel:
    model = ServerOutage()
    # Set after construction: save_hyperparameters() copies init arguments, and a server process can't be.
    model.outage = (server, stop_at, start_at)
    return model


class ServerOutage(TinyModel):
    """Stops the tracking server at one training step, and starts it again at another (or never)."""

    outage: tuple

    def on_train_batch_end(self, outputs, batch, batch_idx):
        server, stop_at, start_at = self.outage
        if self.global_step == stop_at:
            server.stop()
        if self.global_step == start_at:
            server.start()


@pytest.fixture
def server(mlflow_server):
    yield mlflow_server
    if not mlflow_server.running:
        mlflow_server.start()


def assert_every_point_once(client: MlflowClient, run_id: str) -> None:
    for key, expected in {"train_loss_step": STEPS, "train_mse": STEPS, "val_loss": 2, "train_loss_epoch": 2}.items():
        steps = [point.step for point in client.get_metric_history(run_id, key)]
        duplicated = [step for step, count in Counter(steps).items() if count > 1]
        assert not duplicated, f"{key}: steps stored twice: {duplicated}"
        assert len(steps) == expected, f"{key}: {len(steps)} points, expected {expected}"


def test_points_survive_the_server_being_down_at_start_and_during_fit(server, experiment_name, tmp_path):
    client = MlflowClient(server.uri)
    server.stop()
    release = threading.Event()

    def start_later() -> None:
        time.sleep(2.0)
        server.start()  # back while the logger waits for it
        release.wait()  # the server dies with the thread that started it

    starter = threading.Thread(target=start_later, daemon=True)
    starter.start()
    try:
        logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=server.uri, server_wait=90)
        model = server_outage(server, stop_at=4, start_at=11)  # stopped and started again from this thread
        make_trainer(logger).fit(model, TinyData())
    finally:
        release.set()
        starter.join()
    assert logger.flush() == 0
    assert_every_point_once(client, logger.run_id)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not journal_path(logger.save_dir, logger.run_id).exists()


def _fit_into_an_outage(server, experiment_name, tmp_path, caplog) -> tuple[MLflowLogger, Path]:
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=server.uri, flush_timeout=2)
    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(server_outage(server, stop_at=5, start_at=None), TinyData())
    assert not server.running
    journal = journal_path(logger.save_dir, logger.run_id)
    assert journal.exists(), "undelivered points must be kept on disk"
    message = next(r.getMessage() for r in caplog.records if "not delivered" in r.getMessage())
    assert f"lightning-mlflow sync {journal}" in message
    return logger, journal


def sync(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_mlflow_ext.commands", "sync", str(path), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sync_delivers_the_journal_exactly_once(server, experiment_name, tmp_path, caplog):
    logger, journal = _fit_into_an_outage(server, experiment_name, tmp_path, caplog)
    pending = Journal.open_existing(journal).pending_points()
    assert pending >= STEPS  # the outage began at step 5 of 16: most points are in the journal
    server.start()
    first = sync(Path(logger.save_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"delivered {pending} points" in first.stdout
    client = MlflowClient(server.uri)
    assert_every_point_once(client, logger.run_id)
    assert client.get_run(logger.run_id).info.status == "FINISHED"  # the final status was journaled too
    assert not journal.exists()

    second = sync(Path(logger.save_dir))
    assert second.returncode == 0 and "Nothing to deliver" in second.stdout
    assert_every_point_once(client, logger.run_id)


def test_a_later_logger_on_the_same_save_dir_replays_the_journal(server, experiment_name, tmp_path, caplog):
    logger, journal = _fit_into_an_outage(server, experiment_name, tmp_path, caplog)
    server.start()
    later = MLflowLogger(tracking_uri=server.uri, run_id=logger.run_id, save_dir=logger.save_dir)
    assert later.run_id == logger.run_id  # attaching (as a Trainer does at setup) starts the replay
    assert later.flush(timeout=60) == 0
    client = MlflowClient(server.uri)
    assert_every_point_once(client, logger.run_id)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not journal.exists()


def test_a_refused_metric_name_does_not_sink_the_others(tracking_uri, client, experiment_name, tmp_path, caplog):
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    journal = Journal(journal_path(tmp_path, run_id), Header(run_id, tracking_uri))
    writer = RunWriter(make_transport(tracking_uri, client), run_id, journal)
    points = [(f"ok{i}", float(i), 1_700_000_000_000 + i, i) for i in range(50)]
    points.insert(17, ("bad@name", 1.0, 1_700_000_000_000, 0))
    with caplog.at_level(logging.WARNING):
        writer.log_metrics(points)
        writer.log_metrics([("bad@name", 2.0, 1_700_000_000_001, 1), ("ok0", 9.0, 1_700_000_000_100, 100)])
        report = writer.flush(timeout=60)
    assert report.rejected == 2 and report.pending == 0
    metrics = client.get_run(run_id).data.metrics
    assert sorted(metrics) == sorted(f"ok{i}" for i in range(50))
    assert [p.step for p in client.get_metric_history(run_id, "ok0")] == [0, 100]
    warnings = [r for r in caplog.records if "bad@name" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_synchronous_writes_raise_when_refused(tracking_uri, client, experiment_name, tmp_path):
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    journal = Journal(journal_path(tmp_path, run_id), Header(run_id, tracking_uri))
    writer = RunWriter(make_transport(tracking_uri, client), run_id, journal, synchronous=True)
    writer.log_metrics([("fine", 1.0, 1_700_000_000_000, 0)])
    assert [p.value for p in client.get_metric_history(run_id, "fine")] == [1.0]
    with pytest.raises(WriteRefusedError, match="bad@name"):
        writer.log_metrics([("bad@name", 1.0, 1_700_000_000_000, 0)])


def test_memory_stays_bounded_by_spilling_to_the_journal(tracking_uri, client, experiment_name, tmp_path):
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    journal = Journal(journal_path(tmp_path, run_id), Header(run_id, tracking_uri))
    writer = RunWriter(make_transport(tracking_uri, client), run_id, journal, max_queued_points=500)
    for step in range(600):
        writer.log_metrics([(f"m{i}", float(step), 1_700_000_000_000 + step, step) for i in range(5)])
        assert writer._queued_points <= 500
    assert writer.flush(timeout=120).pending == 0
    for i in range(5):
        steps = [p.step for p in client.get_metric_history(run_id, f"m{i}")]
        assert sorted(steps) == list(range(600))
    assert not journal.path.exists()


def test_while_training_runs_points_go_in_full_batches(mlflow_server, experiment_name, tmp_path):
    # A clock tick sends what is queued once; it must not then chase the training loop in requests of a few
    # points (which cost the server several times more per point). The transport is the real one, counting.
    uri = mlflow_server.uri
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    transport = make_transport(uri, client)
    requests: list[int] = []
    send = transport.log_batch

    def counting_log_batch(run: str, metrics=(), params=(), tags=()) -> None:  # type: ignore[no-untyped-def]
        requests.append(len(metrics))
        send(run, metrics, params, tags)

    transport.log_batch = counting_log_batch  # type: ignore[method-assign]
    journal = Journal(journal_path(tmp_path, run_id), Header(run_id, uri))
    writer = RunWriter(transport, run_id, journal, flush_interval=0.2)
    steps = 750
    started = time.monotonic()
    for step in range(steps):  # 11 points every 4 ms, the pace of the benchmark's training loop
        writer.log_metrics([(f"m{k}", float(step), 1_700_000_000_000 + step, step) for k in range(11)])
        time.sleep(0.004)
    ticks_passed = (time.monotonic() - started) / 0.2
    assert writer.flush(timeout=120).pending == 0
    points = 11 * steps
    assert sum(requests) == points
    assert len(client.get_metric_history(run_id, "m0")) == steps
    partial = [n for n in requests if n < 1000]
    assert len(partial) <= ticks_passed + 5, f"{len(partial)} partial requests in {ticks_passed:.0f} ticks: {requests}"


def _writer_threads(run_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"mlflow-writer-{run_id[:8]}" and t.is_alive()]


def test_a_finished_run_keeps_no_writer_thread_and_a_later_stage_starts_one(
    tracking_uri, client, experiment_name, tmp_path
):
    # A notebook fits many times: each finished run's writer must not keep a thread waking every second.
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, save_dir=tmp_path)
    model = TinyModel()
    trainer = make_trainer(logger)
    trainer.fit(model, datamodule=TinyData())
    run_id = logger.run_id
    deadline = time.monotonic() + 10
    while _writer_threads(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _writer_threads(run_id)
    assert client.get_run(run_id).info.status == "FINISHED"

    trainer.test(model, datamodule=TinyData())  # the same run: a new worker delivers the test metrics
    assert [m.step for m in client.get_metric_history(run_id, "test_loss")] == [2]
    assert client.get_run(run_id).info.status == "FINISHED"
    deadline = time.monotonic() + 10
    while _writer_threads(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _writer_threads(run_id)


class TenMetrics(TinyModel):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        loss = super().training_step(batch, batch_idx)
        for i in range(8):
            self.log(f"m{i}", loss.detach() + i, on_step=True, on_epoch=False)
        return loss


def test_near_the_known_end_of_a_fit_points_go_in_small_requests(mlflow_server, experiment_name, tmp_path, monkeypatch):
    # With max_steps known, the last 1000 points of the fit go in requests of a few hundred, so the drain at
    # the end of the fit waits for the server to take a few hundred points, not a 1000-point request.
    requests: list[int] = []
    send = HttpTransport.log_batch

    def counting_log_batch(self, run_id, metrics=(), params=(), tags=()):  # type: ignore[no-untyped-def]
        if metrics:
            requests.append(len(metrics))
        send(self, run_id, metrics, params, tags)

    monkeypatch.setattr(HttpTransport, "log_batch", counting_log_batch)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=mlflow_server.uri, save_dir=tmp_path)
    # 155 steps x 11 points: 1,705 points. Without the tail: one request of 1000, then the last 705 at the end.
    steps = 155
    trainer = make_trainer(logger, max_epochs=1, max_steps=steps, limit_val_batches=0, limit_train_batches=steps)
    trainer.fit(TenMetrics(), datamodule=TinyData(n_train=8 * steps))
    client = MlflowClient(mlflow_server.uri)
    assert len(client.get_metric_history(logger.run_id, "m7")) == steps
    stored = sum(len(client.get_metric_history(logger.run_id, k)) for k in client.get_run(logger.run_id).data.metrics)
    assert sum(requests) == stored
    # From 1000 points before the end: requests of 200 and more as they fill, and the last one holds only
    # what was logged while the one before it was sent (without the tail: [~1000, ~700]).
    assert len(requests) >= 4, requests
    assert requests[-1] < 400, requests
