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
from mlflow.entities import Run

from lightning_mlflow_ext.delivery.journal import find_journals
from lightning_mlflow_ext.delivery.logged_models import CHANGE_ID_TAG
from lightning_mlflow_ext.run.channels import STAGING_DIR
from lightning_mlflow_ext.run.tags import BEST_MODEL_ID_TAG, REGISTERED_MODEL_TAG
from lightning_mlflow_ext.trainer.logger import DEFAULT_SAVE_DIR

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


def models_of(client: MlflowClient, run: Run) -> list[dict[str, object]]:
    """The run's logged models and their registrations, ids left out (no two fits share them)."""
    found = []
    for model in client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    ):
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        found.append({
            "name": model.name,
            "status": str(model.status),
            "params": model.params,
            "tags": {k: v for k, v in model.tags.items() if k not in (CHANGE_ID_TAG, "mlflow.modelVersions")},
            "files": sorted(item.path for item in client.list_logged_model_artifacts(model.model_id)),
            # A checkpoint's model: the points of its epoch linked to it, each with its split's dataset.
            "metrics": sorted((m.key, m.step, m.dataset_name or "") for m in model.metrics),
            "in the run's tag": run.data.tags.get(BEST_MODEL_ID_TAG) == model.model_id,
            "versions": [
                (str(v.version), sorted(client.get_model_version(v.name, v.version).aliases))
                for v in versions
                if v.source == model.artifact_location
            ],
        })  # fmt: skip
    return found


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
        "tags": {
            k: v if k not in (BEST_MODEL_ID_TAG, REGISTERED_MODEL_TAG) else "present"
            for k, v in run.data.tags.items()
            if not k.endswith(("heartbeat", "runName", "problems"))
        },
        "models": models_of(client, run),
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
    # Folder names of one length: a checkpoint holds its ModelCheckpoint's absolute paths, and torch pads the
    # pickle to 64 bytes, so paths of other lengths would make the two checkpoints' sizes differ now and then.
    normal, outage_dir = tmp_path / "normal", tmp_path / "outage"
    assert len(normal.name) == len(outage_dir.name)
    # The reference fit's every write must arrive without sync, even on a busy machine: the end of the fit waits
    # for them (the outage fit's end waits 5 s: what the server did not take goes to the journal anyway).
    reference = train(
        normal, server.uri, experiment_name, "--registered-model", experiment_name + "-r", "--flush-timeout", "120"
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    outage = train(
        outage_dir, server.uri, experiment_name, *outage_from, "--server-pid", str(server.pid),
        "--registered-model", experiment_name + "-o",
    )  # fmt: skip
    assert outage.returncode == 0, outage.stderr[-3000:]
    assert not server.running
    journals = find_journals(outage_dir)
    assert journals, "what the server did not take must be kept on disk"
    assert "lightning-mlflow sync" in outage.stderr

    server.start()
    for _ in range(2):  # the second sync finds nothing left and changes nothing
        delivered = sync(outage_dir)
        assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    assert not find_journals(outage_dir)
    staging = outage_dir / DEFAULT_SAVE_DIR / STAGING_DIR
    assert staging.is_dir()
    assert not [path for path in staging.rglob("*") if path.is_file()], "staged copies are removed once stored"

    reference_id = reference.stdout.strip().splitlines()[-1]
    outage_id = outage.stdout.strip().splitlines()[-1]
    expected = record_of(client, reference_id, tmp_path / "dl-normal")
    got = record_of(client, outage_id, tmp_path / "dl-outage")
    assert {"images/sample+step+2.png", "images/sample+step+2+compressed.webp", "images/last-2.png",
            "reports/report-2.txt", "notes/epoch-2.txt", "state/epoch-2.json", "tables/progress.json"} <= set(
        expected["artifacts"])  # fmt: skip
    assert any(path.startswith("checkpoints/val_loss/") for path in expected["artifacts"])
    assert got["artifacts"] == expected["artifacts"]
    for path in expected["texts"]:
        assert got["texts"][path] == expected["texts"][path], path
    assert got["metrics"] == expected["metrics"]
    assert got["params"] == expected["params"]
    assert got["datasets"] == expected["datasets"] and got["datasets"], "the dataset input arrives once, as it was"
    assert got["tags"] == expected["tags"]
    assert expected["texts"]["tables/progress.json"]["data"] == [[0, 0.05], [1, 0.05], [2, 0.05]]
    assert expected["models"] and all(m["status"] == "READY" for m in expected["models"]), expected["models"]
    # The best checkpoint's own logged model is the best model: the run's tag names it, it alone is registered.
    (best,) = [m for m in expected["models"] if m["in the run's tag"]]
    assert best["versions"] == [("1", ["best"])] and "MLmodel" in best["files"]
    assert not [m for m in expected["models"] if m["versions"] and m is not best]
    assert "val_loss" in {key for key, *_ in best["metrics"]}, "its scores are linked to it"
    assert got["models"] == expected["models"], "the best model is logged and registered once, as it was"
    assert got["status"] == expected["status"] == "FINISHED"


def test_a_model_change_replayed_after_a_partial_success_is_made_once(tracking_uri, client, experiment_name, tmp_path):
    """A process that died between creating the logged model and storing its files (or registering it) leaves a
    journaled ``model`` change; replaying it, even twice, completes that model rather than making another, and
    links its scores (points the run holds) once, leaving the run's history as it was."""
    import shutil

    import torch
    from mlflow.entities import Metric

    from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts
    from lightning_mlflow_ext.delivery.logged_models import model_details
    from lightning_mlflow_ext.delivery.records import ArtifactOp
    from lightning_mlflow_ext.run.models import save_pickled

    experiment_id = client.create_experiment(experiment_name)
    run_id = client.create_run(experiment_id).info.run_id
    best, last = ("val_loss", 0.25, 1_700_000_000_000, 0), ("val_loss", 0.5, 1_700_000_001_000, 1)
    client.log_batch(run_id, metrics=[Metric(*best), Metric(*last)])
    saved = tmp_path / "saved" / "model"
    save_pickled(torch.nn.Linear(2, 1), saved, pip_requirements=["torch"])  # not inferred: a slow subprocess
    name = experiment_name[-20:] + "-m"
    details = model_details(
        change_id="replayed-change", experiment_id=experiment_id, name="best", tags={"k": "v"},
        params={"lr": "0.5"}, model_type="pytorch", run_tag=BEST_MODEL_ID_TAG,
        registered_model_name=name, alias="best", metrics=[(*best, None, None)],  # linked without a dataset
    )  # fmt: skip
    # What the dead process got done: the model exists (PENDING, no files), nothing else.
    client.create_logged_model(
        experiment_id, name="best", source_run_id=run_id, tags={"k": "v", CHANGE_ID_TAG: "replayed-change"},
        params={"lr": "0.5"}, model_type="pytorch",
    )  # fmt: skip

    artifacts = RunArtifacts(client, run_id, tracking_uri)
    for attempt in range(2):
        staged = tmp_path / f"staged-{attempt}" / "model"
        shutil.copytree(saved, staged)
        artifacts.apply(ArtifactOp("model", str(staged), None, details))
        assert not staged.exists(), "the staged model is removed once stored"

    models = client.search_logged_models([experiment_id])
    assert len(models) == 1
    model = models[0]
    assert str(model.status) == "READY" and model.params == {"lr": "0.5"} and model.tags["k"] == "v"
    assert [(m.key, m.value, m.timestamp, m.step) for m in model.metrics] == [best]
    assert len(client.get_metric_history(run_id, "val_loss")) == 2
    # MLflow 3.2's client lists a logged model's files from the process's tracking URI, whatever its own: the
    # read back is pointed there (the writes above are done).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        assert "MLmodel" in [item.path for item in client.list_logged_model_artifacts(model.model_id)]
    assert client.get_run(run_id).data.tags[BEST_MODEL_ID_TAG] == model.model_id
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias(name, "best").version == versions[0].version
