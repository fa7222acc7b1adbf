"""DDP (real processes, gloo on CPU) and resumed fits land in one run. Each test runs tests/train_script.py as a
subprocess and checks the result through MlflowClient: one run, one point per (key, step), the right status."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from lightning_mlflow_ext import load_checkpoint
from lightning_mlflow_ext.run.environment import PACKAGES_ARTIFACT
from lightning_mlflow_ext.run.tags import env_tag

SCRIPT = Path(__file__).with_name("train_script.py")
STEPS_PER_EPOCH = 8  # TinyData: 64 samples, batch 8


def train(tmp_path: Path, uri: str, experiment: str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--tracking-uri", uri, "--experiment", experiment,
               "--report", str(tmp_path / "report"), *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def reports(tmp_path: Path) -> dict[int, dict[str, str]]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in (tmp_path / "report").glob("rank*.json")}


def runs_of(client: MlflowClient, experiment: str, view: int = ViewType.ACTIVE_ONLY) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], run_view_type=view)


def steps_by_key(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    run = client.get_run(run_id)
    return {key: [m.step for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}


def assert_no_point_twice(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    steps = steps_by_key(client, run_id)
    twice = {key: [s for s, n in collections.Counter(v).items() if n > 1] for key, v in steps.items()}
    assert not any(twice.values()), f"(key, step) stored twice: {twice}"
    return steps


def artifact_files(client: MlflowClient, run_id: str, path: str) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, path) if not a.is_dir)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_fit_then_test_is_one_run_written_by_rank_zero(strategy, mlflow_server, experiment_name, tmp_path):
    done = train(tmp_path, mlflow_server.uri, experiment_name, "--strategy", strategy, "--devices", "2", "--test")
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(mlflow_server.uri)
    (run,) = runs_of(client, experiment_name)
    ranks = reports(tmp_path)
    assert sorted(ranks) == [0, 1]
    assert {r["run_id"] for r in ranks.values()} == {run.info.run_id}
    assert {r["version"] for r in ranks.values()} == {run.info.run_id}
    assert len({r["pid"] for r in ranks.values()}) == 2  # really two processes
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.05"
    assert run.data.params["trainer/devices"] == "2"  # MLflowCallback, pickled into ddp_spawn's workers too
    assert run.data.params["trainer/strategy"] in ("DDPStrategy",)
    # What ran it, recorded by rank 0 once: the whole job's world size (ddp_spawn: from its worker).
    assert run.data.tags[env_tag("world_size")] == "2"
    assert run.data.tags[env_tag("strategy")] == run.data.params["trainer/strategy"]
    assert artifact_files(client, run.info.run_id, "environment") == [PACKAGES_ARTIFACT]
    steps = assert_no_point_twice(client, run.info.run_id)
    # Two processes split each epoch's 8 batches: 4 optimizer steps an epoch, logged once (by rank 0).
    assert sorted(steps["train_loss_step"]) == list(range(2 * STEPS_PER_EPOCH // 2))
    assert sorted(steps["val_loss"]) == [0, 1]
    # test() after two epochs: step = epoch (a ddp_spawn worker starts test() from the main process's state)
    assert steps["test_loss"] == ([2] if strategy == "ddp" else [0])
    # Each checkpoint once, with its metadata, under each callback's key.
    assert artifact_files(client, run.info.run_id, "checkpoints/latest") == [
        "checkpoints/latest/every-epoch=0.ckpt",
        "checkpoints/latest/every-epoch=0.ckpt.json",
        "checkpoints/latest/every-epoch=1.ckpt",
        "checkpoints/latest/every-epoch=1.ckpt.json",
    ]
    assert "checkpoints/val_loss/last.ckpt" in artifact_files(client, run.info.run_id, "checkpoints/val_loss")


def test_ddp_with_the_server_down_fails_every_rank_before_training(experiment_name, tmp_path):
    from mlflow_server import _free_port

    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    done = train(tmp_path, dead, experiment_name, "--strategy", "ddp", "--devices", "2", "--server-wait", "2",
                 timeout=180)
    assert done.returncode != 0
    assert time.monotonic() - started < 150  # every rank stopped: nobody waits in a collective for rank 0
    assert "Global rank 0 could not set up the MLflow run" in done.stderr  # what rank 1 says
    assert dead in done.stderr  # rank 0's own error names the server
    assert not reports(tmp_path)  # no rank trained


def test_a_fit_killed_mid_epoch_resumes_into_the_same_run(tracking_uri, experiment_name, tmp_path):
    killed = train(tmp_path, tracking_uri, experiment_name, "--max-epochs", "4", "--ckpt-dir", "ckpts",
                   "--kill-at-step", "20")
    assert killed.returncode == -signal.SIGKILL
    client = MlflowClient(tracking_uri)
    (first,) = runs_of(client, experiment_name)
    assert first.info.status == "RUNNING"  # nobody could end it
    assert max(steps_by_key(client, first.info.run_id)["train_loss_step"]) > 16  # epoch 2 was half done

    resumed = train(tmp_path, tracking_uri, experiment_name, "--max-epochs", "4", "--ckpt-dir", "ckpts",
                    "--ckpt-path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    (run,) = runs_of(client, experiment_name)
    assert run.info.run_id == first.info.run_id
    assert reports(tmp_path)[0]["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["lightning_mlflow_ext.resumed_at_step"] == "16"  # last.ckpt: end of epoch 1
    steps = assert_no_point_twice(client, run.info.run_id)
    assert sorted(steps["train_loss_step"]) == list(range(4 * STEPS_PER_EPOCH))
    assert sorted(steps["val_loss"]) == [0, 1, 2, 3]
    # Checkpoints of the resumed epochs land in the same run, next to the first process's.
    assert "checkpoints/latest/every-epoch=3.ckpt" in artifact_files(client, run.info.run_id, "checkpoints/latest")
    assert "checkpoints/latest/every-epoch=0.ckpt" in artifact_files(client, run.info.run_id, "checkpoints/latest")


def test_resuming_from_a_checkpoint_downloaded_from_the_run_continues_it(tracking_uri, experiment_name, tmp_path):
    killed = train(tmp_path, tracking_uri, experiment_name, "--max-epochs", "3", "--kill-at-step", "12")
    assert killed.returncode == -signal.SIGKILL
    client = MlflowClient(tracking_uri)
    (first,) = runs_of(client, experiment_name)
    # A new machine: the checkpoint comes from the run, the run is named by MLFLOW_RUN_ID.
    path = load_checkpoint(
        first.info.run_id, "latest", callback="val_loss", tracking_uri=tracking_uri, dst_path=str(tmp_path / "dl")
    )
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    resumed = train(fresh, tracking_uri, experiment_name, "--max-epochs", "3", "--ckpt-path", path,
                    env={"MLFLOW_RUN_ID": first.info.run_id})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was killed without ending the run" in resumed.stderr  # the dead process's run is taken over

    (run,) = runs_of(client, experiment_name, ViewType.ALL)  # nothing created, nothing deleted
    assert run.info.run_id == first.info.run_id
    assert run.info.status == "FINISHED"
    steps = assert_no_point_twice(client, run.info.run_id)
    assert sorted(steps["train_loss_step"]) == list(range(3 * STEPS_PER_EPOCH))


def test_slurm_auto_requeue_continues_the_run(tracking_uri, experiment_name, tmp_path):
    first = train(tmp_path, tracking_uri, experiment_name, "--max-epochs", "1", "--save-hpc")
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    (before,) = runs_of(client, experiment_name)
    assert before.info.status == "FINISHED"
    # The requeued job: same folder, no ckpt_path; Lightning finds hpc_ckpt_1.ckpt because SLURM is detected.
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1"}
    requeued = train(tmp_path, tracking_uri, experiment_name, "--max-epochs", "3", env=slurm)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    (run,) = runs_of(client, experiment_name)
    assert run.info.run_id == before.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["lightning_mlflow_ext.resumed_at_step"] == str(STEPS_PER_EPOCH)
    steps = assert_no_point_twice(client, run.info.run_id)
    assert sorted(steps["train_loss_step"]) == list(range(3 * STEPS_PER_EPOCH))
