"""Files reach the run's artifact store byte for byte, under the name asked for, whatever the store.

Against ``mlflow server --serve-artifacts`` they go over this package's own connection (``sendfile``); on
the embedded store through MLflow's repository. Both are read back through ``MlflowClient``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts
from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault
from lightning_mlflow_ext.delivery.uploader import UPLOAD_NICENESS, ArtifactUploader, snapshot


def _run(client: MlflowClient, experiment_name: str) -> str:
    return client.create_run(client.create_experiment(experiment_name)).info.run_id


@pytest.mark.parametrize("name", ["epoch=3-step=40.ckpt", "val loss 0.25%.ckpt", "modèle.pt"])
def test_a_file_arrives_whole_under_its_name(tracking_uri, client, experiment_name, tmp_path, name):
    run_id = _run(client, experiment_name)
    local = tmp_path / name
    local.write_bytes(os.urandom(3_000_000))
    store = RunArtifacts(client, run_id, tracking_uri)

    store.log_file(local, "checkpoints/val_loss")
    store.log_file(local, None)

    assert [f.path for f in client.list_artifacts(run_id, "checkpoints/val_loss")] == [f"checkpoints/val_loss/{name}"]
    assert name in [f.path for f in client.list_artifacts(run_id)]
    for artifact_path in (f"checkpoints/val_loss/{name}", name):
        back = Path(client.download_artifacts(run_id, artifact_path, str(tmp_path / "back" / artifact_path)))
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()


def test_a_bad_folder_is_refused_and_nothing_is_stored(tracking_uri, client, experiment_name, tmp_path):
    run_id = _run(client, experiment_name)
    local = tmp_path / "w.ckpt"
    local.write_bytes(b"weights")

    with pytest.raises(MlflowException, match="Invalid artifact path"):
        RunArtifacts(client, run_id, tracking_uri).log_file(local, "../elsewhere")
    assert client.list_artifacts(run_id) == []


def test_an_upload_the_server_refuses_raises_with_its_answer(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    run_id = _run(client, "refused-upload")
    local = tmp_path / "w.ckpt"
    local.write_bytes(b"weights")

    # Passes the client-side check, but the proxy decodes it to ".." and refuses it.
    with pytest.raises(DeliveryError, match=r"storing artifact %2e%2e/w.ckpt: HTTP 400 .*Invalid path") as refused:
        RunArtifacts(client, run_id, mlflow_server.uri).log_file(local, "%2e%2e")
    assert refused.value.fault is Fault.ONE_RECORD
    assert client.list_artifacts(run_id) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux gives a thread its own nice value")
def test_uploads_run_at_a_lower_cpu_priority_than_training(tracking_uri, client, experiment_name, tmp_path):
    run_id = _run(client, experiment_name)
    artifacts = RunArtifacts(client, run_id, tracking_uri)
    handed_off: list = []
    uploader = ArtifactUploader(run_id, artifacts, tmp_path / "staging", hand_off=handed_off.extend)
    local = tmp_path / "w.ckpt"
    local.write_bytes(os.urandom(1_000_000))
    seen: list[tuple[int, int]] = []

    def nice_of_uploading_thread() -> list:  # what `ps -L -o tid,nice` shows for the upload thread
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return []  # no artifact change

    uploader.upload_snapshot(snapshot(local, uploader.staging), "checkpoints")
    uploader.submit("read nice", nice_of_uploading_thread)
    report = uploader.flush(timeout=60)

    assert report.failed == [] and report.pending == 0 and handed_off == []
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/w.ckpt"]
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    [(tid, nice)] = seen
    assert tid != threading.get_native_id()
    assert nice == max(UPLOAD_NICENESS, main_nice)  # lowered, never raised, and the training thread untouched


def test_a_change_still_being_prepared_when_the_run_ends_is_handed_over_before_those_queued_after_it(
    experiment_name, tmp_path
):
    """On a loaded machine the upload thread may still be writing a table when the run ends and the park's
    wait is over: the park waits for it, so the journal gets it, and gets it before the newer table."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # no server needed: nothing is sent before the park
    client = MlflowClient(uri)
    run_id = _run(client, experiment_name)
    artifacts = RunArtifacts(client, run_id, uri)
    handed_off: list = []
    uploader = ArtifactUploader(run_id, artifacts, tmp_path / "staging", hand_off=handed_off.extend)
    writing = threading.Event()

    def write_slowly(path: str) -> None:  # the first version of the table, still being written at the end
        writing.set()
        time.sleep(0.5)
        Path(path).write_text('{"rows": 1}')

    uploader.log_table(write_slowly, "tables/progress.json")
    uploader.log_table(lambda path: Path(path).write_text('{"rows": 2}'), "tables/progress.json")
    assert writing.wait(10)
    uploader.park(0.05)

    # Everything is handed over once park returns (the process may end right after), in the order logged.
    assert [Path(op.path).read_text() for op in handed_off] == ['{"rows": 1}', '{"rows": 2}']
    for op in handed_off:  # what the writer, or `lightning-mlflow sync`, does with them later
        artifacts.apply(op)
    table = Path(client.download_artifacts(run_id, "tables/progress.json", str(tmp_path / "back")))
    assert table.read_text() == '{"rows": 2}', "the newest table is the run's"
