"""Fixtures for a "team server": a real PostgreSQL on loopback with ``mlflow server --workers 4`` on it.

Registered in tests/conftest.py through ``pytest_plugins``. Both are session-scoped and started only when a
test asks for them (the cluster takes about a second, the server's first start runs MLflow's migrations).

Fixtures
--------
``postgres_cluster`` (session)
    A :class:`postgres.PostgresCluster` on a free 127.0.0.1 port, trust authentication, stopped and deleted
    at the end of the session. Fails (never skips) when the PostgreSQL server binaries are missing, with a
    message naming ``apt-get install postgresql``.
``team_server`` (session)
    A :class:`TeamServer`: ``.uri`` (the tracking URI), ``.server`` (the :class:`MlflowServer`, 4 workers,
    proxied artifacts), ``.postgres`` and ``.database`` (its backend store), ``.psql(sql)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mlflow_server import MlflowServer, _free_port
from postgres import PostgresCluster, PostgresError

TEAM_SERVER_WORKERS = 4
TEAM_SERVER_DATABASE = "mlflow"
TEAM_SERVER_START_TIMEOUT_S = 240.0  # the first start creates MLflow's schema (dozens of migrations)


@dataclass(frozen=True)
class TeamServer:
    server: MlflowServer
    postgres: PostgresCluster
    database: str

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def backend_store_uri(self) -> str:
        return self.postgres.uri(self.database)

    def psql(self, sql: str) -> str:
        """Run ``sql`` in the server's database (psql, unaligned, tuples only)."""
        return self.postgres.psql(sql, self.database)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
    except PostgresError as exc:  # binaries missing: a failure that says what to install, not a skip
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def team_server(postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URIs)
    except ImportError:
        pytest.fail("the team server needs psycopg: pip install -e '.[test]' (psycopg[binary])", pytrace=False)
    postgres_cluster.create_database(TEAM_SERVER_DATABASE)
    server = MlflowServer(
        tmp_path_factory.mktemp("team_server"),
        _free_port(),
        backend_store_uri=postgres_cluster.uri(TEAM_SERVER_DATABASE),
        workers=TEAM_SERVER_WORKERS,
    )
    try:
        server.start(timeout=TEAM_SERVER_START_TIMEOUT_S)
        yield TeamServer(server, postgres_cluster, TEAM_SERVER_DATABASE)
    finally:
        server.stop()
