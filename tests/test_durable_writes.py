"""Artifacts written while the tracking server is gone reach the run later: an outage that outlasts the process,
then ``lightning-mlflow sync`` twice, gives the run a fit without the outage would have.

Each fit runs in a process of its own (``tests/durable_train.py``), which exits while the server is still down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lightning_mlflow_ext.delivery.journal import find_journals

SCRIPT = Path(__file__).with_name("durable_train.py")


@pytest.fixture
def server(mlflow_server):
    yield mlflow_server
    if not mlflow_server.running:
        mlflow_server.start()


def train(folder: Path, uri: str, experiment: str, *extra: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--tracking-uri", uri, "--experiment", experiment, *extra],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def sync(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_mlflow_ext.commands", "sync", str(folder), "--timeout", "60"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def artifact_files(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    """Every artifact path; step-keyed image names lose their timestamp and uuid, which no two fits share."""
    found: list[str] = []
    for entry in client.list_artifacts(run_id, path or None):
        found.extend(artifact_files(client, run_id, entry.path) if entry.is_dir else [entry.path])
    return sorted(re.sub(r"\+timestamp\+\d+\+[0-9a-f-]+", "", name) for name in found)


def text_artifacts(client: MlflowClient, run_id: str, folder: Path) -> dict[str, str]:
    """The contents of the run's small text artifacts (checkpoint bytes are compared by their metadata)."""
    contents: dict[str, str] = {}
    for path in artifact_files(client, run_id):
        if path.endswith((".json", ".txt", ".yaml")):
            local = Path(client.download_artifacts(run_id, path, str(folder)))
            contents[path] = local.read_text()
    return contents


def comparable(text: str, path: str) -> object:
    """A text artifact with what legitimately differs between two runs (times, hashes of the weights) left out."""
    if not path.endswith(".json"):
        return text
    data = json.loads(text)
    if isinstance(data, dict):
        for key in ("saved_at", "sha256"):
            data.pop(key, None)
    return data


def record_of(client: MlflowClient, run_id: str, folder: Path) -> dict[str, object]:
    run = client.get_run(run_id)
    metrics = {
        key: sorted(Counter(point.step for point in client.get_metric_history(run_id, key)).items())
        for key in run.data.metrics
    }
    texts = text_artifacts(client, run_id, folder)
    return {
        "status": run.info.status,
        "datasets": sorted(
            (item.dataset.name, item.dataset.digest, item.dataset.source_type, [(t.key, t.value) for t in item.tags])
            for item in run.inputs.dataset_inputs
        ),
        # Left out: the run's own name and heartbeat, and the lineage note, which names each fit's own folder.
        "tags": {k: v for k, v in run.data.tags.items() if not k.endswith(("heartbeat", "runName", "problems"))},
        "params": run.data.params,
        "metrics": metrics,
        "artifacts": artifact_files(client, run_id),
        "texts": {path: comparable(text, path) for path, text in texts.items()},
    }


@pytest.mark.parametrize(
    "outage_from", [["--stop-server-at-step", "5"], ["--stop-server-before-fit"]], ids=["step-5", "before-fit"]
)
def test_every_write_made_during_an_outage_that_outlasts_the_process_arrives_with_sync(
    server, experiment_name, tmp_path, outage_from
):
    client = MlflowClient(server.uri)
    reference = train(tmp_path / "reference", server.uri, experiment_name)
    assert reference.returncode == 0, reference.stderr[-3000:]

    outage = train(tmp_path / "outage", server.uri, experiment_name, *outage_from, "--server-pid", str(server.pid))
    assert outage.returncode == 0, outage.stderr[-3000:]
    assert not server.running
    journals = find_journals(tmp_path / "outage")
    assert journals, "what the server did not take must be kept on disk"
    assert "lightning-mlflow sync" in outage.stderr

    server.start()
    for _ in range(2):  # the second sync finds nothing left and changes nothing
        delivered = sync(tmp_path / "outage")
        assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    assert not find_journals(tmp_path / "outage")
    assert not any((tmp_path / "outage" / ".mlflow-uploads").rglob("*.*")), "staged copies are removed once stored"

    reference_id = reference.stdout.strip().splitlines()[-1]
    outage_id = outage.stdout.strip().splitlines()[-1]
    expected = record_of(client, reference_id, tmp_path / "dl-reference")
    got = record_of(client, outage_id, tmp_path / "dl-outage")
    assert {"images/sample+step+2.png", "images/sample+step+2+compressed.webp", "images/last-2.png",
            "reports/report-2.txt", "notes/epoch-2.txt", "state/epoch-2.json"} <= set(
        expected["artifacts"])  # fmt: skip
    assert any(path.startswith("checkpoints/val_loss/") for path in expected["artifacts"])
    assert got["artifacts"] == expected["artifacts"]
    for path in expected["texts"]:
        assert got["texts"][path] == expected["texts"][path], path
    assert got["metrics"] == expected["metrics"]
    assert got["params"] == expected["params"]
    assert got["datasets"] == expected["datasets"] and got["datasets"], "the dataset input arrives once, as it was"
    assert got["tags"] == expected["tags"]
    assert got["status"] == expected["status"] == "FINISHED"
