"""Self-tests of the shared fixtures, plus backend facts the rest of the suite relies on.

Everything here talks to REAL MLflow backends (embedded sqlite store and a real ``mlflow server``).
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from pathlib import Path

import lightning
import mlflow
import pytest
import requests
from conftest import MlflowServer
from mlflow.entities import Metric
from tiny import TinyData, TinyModel, make_trainer

F64_MAX = 1.7976931348623157e308

# --------------------------------------------------------------------------- server fixture


def test_server_data_survives_stop_and_start(mlflow_server: MlflowServer, experiment_name: str) -> None:
    assert mlflow_server.uri == f"http://127.0.0.1:{mlflow_server.port}"
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.create_run(client.create_experiment(experiment_name))
    run_id = run.info.run_id
    client.log_metric(run_id, "m", 0.25, step=3)
    assert [(m.value, m.step) for m in client.get_metric_history(run_id, "m")] == [(0.25, 3)]

    mlflow_server.stop()
    assert not mlflow_server.running
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(mlflow_server.uri + "/health", timeout=2)

    mlflow_server.start()
    assert mlflow_server.running
    assert requests.get(mlflow_server.uri + "/health", timeout=2).status_code == 200
    # Same port, same sqlite backend: both an old client and a fresh one see the data.
    for c in (client, mlflow.MlflowClient(mlflow_server.uri)):
        assert [(m.value, m.step) for m in c.get_metric_history(run_id, "m")] == [(0.25, 3)]
        assert c.get_run(run_id).data.metrics == {"m": 0.25}


def test_server_artifact_lands_in_artifacts_destination(mlflow_server: MlflowServer, experiment_name: str) -> None:
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(experiment_name)
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"

    client.log_text(run_id, "hi", "a/b.txt")

    assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id, "a")] == [("a/b.txt", False)]
    on_disk = mlflow_server.artifacts_dir / experiment_id / run_id / "artifacts" / "a" / "b.txt"
    assert on_disk.read_text() == "hi"


# --------------------------------------------------------------------------- non-finite metric values

NON_FINITE_INPUT = {
    "nan": float("nan"),
    "pos_inf": float("inf"),
    "neg_inf": float("-inf"),
    "pos_max": F64_MAX,
    "neg_max": -F64_MAX,
}
# Observed with mlflow 3.17.2. The SQL store clamps +-inf to +-float64 max *before* storing (the
# server uses the same SQL store, so it returns the clamped value; the REST JSON carries
# -1.7976931348623157e+308 for -inf and "NaN" for NaN). Consequences:
#   * NaN survives both stores.
#   * +-inf is NOT preserved: it comes back as +-1.7976931348623157e308 (sign kept) on both stores,
#     indistinguishable from a genuinely logged +-float64 max.
#   * the finite values +-1.7976931348623157e308 survive both stores unchanged, sign included.
# (The DESIGN note "through the server -inf comes back as +1.797e308" does not hold for 3.17.2.)
EXPECTED_READBACK = {
    "sqlite": {
        "nan": math.nan,
        "pos_inf": F64_MAX,
        "neg_inf": -F64_MAX,
        "pos_max": F64_MAX,
        "neg_max": -F64_MAX,
    },
    "server": {
        "nan": math.nan,
        "pos_inf": F64_MAX,
        "neg_inf": -F64_MAX,
        "pos_max": F64_MAX,
        "neg_max": -F64_MAX,
    },
}


def _same_float(got: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(got)
    return got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)


def test_non_finite_metric_values_round_trip(
    request: pytest.FixtureRequest, tracking_uri: str, client: mlflow.MlflowClient, experiment_name: str
) -> None:
    store = request.node.callspec.id
    assert store in EXPECTED_READBACK
    run_id = client.create_run(client.create_experiment(experiment_name)).info.run_id
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in NON_FINITE_INPUT.items()])

    history = {k: [m.value for m in client.get_metric_history(run_id, k)] for k in NON_FINITE_INPUT}
    latest = client.get_run(run_id).data.metrics
    expected = EXPECTED_READBACK[store]
    for key, want in expected.items():
        assert len(history[key]) == 1, (store, key, history[key])
        assert _same_float(history[key][0], want), (store, key, history[key][0], want)
        assert _same_float(latest[key], want), (store, key, latest[key], want)
    # The team's key question, stated on its own: finite +-float64 max keep value and sign.
    assert history["pos_max"] == [F64_MAX]
    assert history["neg_max"] == [-F64_MAX]


# --------------------------------------------------------------------------- per-test fixtures


def test_tracking_uri_experiment_name_and_isolation(
    request: pytest.FixtureRequest,
    tracking_uri: str,
    client: mlflow.MlflowClient,
    experiment_name: str,
    tmp_path: Path,
) -> None:
    if request.node.callspec.id == "sqlite":
        assert tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    else:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", tracking_uri)
    assert client.tracking_uri == tracking_uri
    assert re.fullmatch(r"[A-Za-z0-9_.-]+-[0-9a-f]{12}", experiment_name)
    assert experiment_name.startswith("test_tracking_uri_experiment_name_and_isolation")
    assert client.get_experiment(client.create_experiment(experiment_name)).name == experiment_name

    assert Path.cwd() == tmp_path
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        assert var not in os.environ
    assert mlflow.active_run() is None


# --------------------------------------------------------------------------- tiny model


def test_tiny_model_trains_and_tests() -> None:
    trainer = make_trainer(logger=False)
    model, data = TinyModel(), TinyData()
    trainer.fit(model, data)

    assert trainer.state.status == lightning.pytorch.trainer.states.TrainerStatus.FINISHED
    assert trainer.global_step == 2 * 64 // 8
    assert trainer.default_root_dir == os.getcwd()
    assert {"train_loss_step", "train_loss_epoch", "train_mse", "val_loss"} <= set(trainer.callback_metrics)
    assert all(math.isfinite(float(v)) for v in trainer.callback_metrics.values())
    assert dict(model.hparams) == {"lr": 0.1, "hidden": 4, "fail_at_step": None, "interrupt_at_step": None}
    assert dict(data.hparams) == {"batch_size": 8, "n_train": 64}

    (results,) = trainer.test(model, data, verbose=False)
    assert set(results) == {"test_loss"}


def test_tiny_model_fail_at_step_raises_boom() -> None:
    trainer = make_trainer(logger=False)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        trainer.fit(TinyModel(fail_at_step=3), TinyData())
    assert trainer.global_step == 3
    assert trainer.state.status == lightning.pytorch.trainer.states.TrainerStatus.INTERRUPTED


def test_tiny_model_interrupt_at_step_becomes_system_exit() -> None:
    # Lightning 2.6 turns a KeyboardInterrupt into a graceful shutdown and sys.exit(1); its teardown
    # puts the SIGINT handler back.
    handler_before = signal.getsignal(signal.SIGINT)
    trainer = make_trainer(logger=False)
    with pytest.raises(SystemExit) as exc_info:
        trainer.fit(TinyModel(interrupt_at_step=3), TinyData())
    assert exc_info.value.code == 1
    assert trainer.global_step == 3
    assert trainer.state.status == lightning.pytorch.trainer.states.TrainerStatus.INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is handler_before
