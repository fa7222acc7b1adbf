"""Shared fixtures for tests that run against REAL MLflow backends (no mocks).

Fixtures
--------
``mlflow_server`` (session)
    A real ``mlflow server`` subprocess (sqlite backend, proxied artifacts) on a free
    127.0.0.1 port. Yields an :class:`MlflowServer` with ``.uri``, ``.port``, ``.stop()``
    and ``.start()`` (restart on the same port and the same backend store).
``tracking_uri`` (function, parametrized ``sqlite`` / ``server``)
    ``sqlite:///<tmp_path>/mlflow.db`` (fresh store per test) or the shared server's URI.
``experiment_name`` (function)
    A unique, MLflow-safe experiment name; mandatory for tests that use the shared server.
``client`` (function)
    ``mlflow.MlflowClient(tracking_uri)``.
``_isolate_mlflow_env`` (function, autouse)
    cwd = tmp_path, MLflow run/experiment/tracking env vars removed, fluent runs ended after
    the test; resets the fluent active experiment. Never calls ``mlflow.set_tracking_uri``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make ``from tiny import TinyModel, TinyData, make_trainer`` (and ``from mlflow_server import ...``) work
# from any test module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlflow
from mlflow import MlflowClient
from mlflow_server import (  # noqa: F401  (re-exported: ``from conftest import MlflowServer`` keeps working)
    _MLFLOW_ENV_VARS,
    SERVER_START_TIMEOUT_S,
    SERVER_STOP_TIMEOUT_S,
    MlflowServer,
    ServerStartError,
    _die_with_parent,
    _free_port,
    _port_is_bindable,
)

from lightning_mlflow_ext.run.open_runs import end_open_runs

pytest_plugins = ["team_server_fixtures", "fault_fixtures"]

# --------------------------------------------------------------------------- server (see mlflow_server.py)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), _free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty embedded store with MLflow's tables made, once a session: creating them costs 1-3 s, a copy of
    the file nothing, and MLflow opens a copy (at the newest schema) exactly as a store it just created."""
    path = tmp_path_factory.mktemp("sqlite_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def fresh_sqlite_store(folder: Path, template: Path) -> str:
    """A new, empty embedded store at ``folder/mlflow.db`` (a copy of the session's template), as a URI."""
    shutil.copyfile(template, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


# --------------------------------------------------------------------------- per-test fixtures


@pytest.fixture(params=["sqlite", "server"], ids=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return fresh_sqlite_store(tmp_path, request.getfixturevalue("sqlite_template"))
    server: MlflowServer = request.getfixturevalue("mlflow_server")  # started only when needed
    return server.uri


@pytest.fixture
def experiment_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_.-")[:80] or "test"
    return f"{base}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(tracking_uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri)


@pytest.fixture(autouse=True)
def _isolate_mlflow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    for name in _MLFLOW_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    # A test that used a logger without a Trainer leaves its run open, as a script would until exit:
    # end it while this test's store is still there (the process-exit path has tests of its own).
    end_open_runs("FINISHED")
    for _ in range(100):  # bounded: never loop forever on a broken store
        if mlflow.active_run() is None:
            break
        try:
            mlflow.end_run()
        except Exception as exc:  # the run is popped before the store is called
            warnings.warn(f"could not end leftover MLflow run after test: {exc!r}", stacklevel=1)
    # mlflow.set_experiment() writes MLFLOW_EXPERIMENT_ID to os.environ and a module global;
    # neither is undone by monkeypatch if the variable was absent before the test.
    for name in _MLFLOW_ENV_VARS:
        os.environ.pop(name, None)  # monkeypatch then restores any pre-test values
    fluent = mlflow.tracking.fluent
    if hasattr(fluent, "_active_experiment_id"):
        fluent._active_experiment_id = None
    last = getattr(fluent, "_last_active_run_id", None)
    if last is not None and hasattr(last, "set"):
        last.set(None)
