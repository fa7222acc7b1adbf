"""Pytest fixtures for fault injection, loaded by ``pytest_plugins = ["fault_fixtures"]`` in ``tests/conftest.py``.

Fixtures
--------
``auth_server`` (session)
    A started ``mlflow server --app-name basic-auth`` (:class:`fault_servers.BasicAuthServer`); ``.admin`` holds
    the admin :class:`~fault_servers.Credentials`. Default permission EDIT: any user may create and write runs.
``auth_user`` (function)
    A fresh non-admin user on ``auth_server`` (unique name), as :class:`~fault_servers.Credentials`.
``fault_proxy`` (function)
    A :class:`~fault_servers.FaultProxy` in front of the session ``mlflow_server``, faults off; closed after the
    test, so faults never leak into the next one.
``tls_certs`` (session)
    ``(cert.pem, key.pem)``: a self-signed certificate for 127.0.0.1 that is its own CA.
``tls_front`` (function)
    An HTTPS :class:`~fault_servers.FaultProxy` (``tls_certs``) in front of ``mlflow_server``; clients trust it
    with ``MLFLOW_TRACKING_SERVER_CERT_PATH=tls_certs[0]``.

A proxy fixture fails the test at teardown if the proxy itself raised unexpectedly (``FaultProxy.errors``).
Every fixture is bounded in time: server start by ``SERVER_START_TIMEOUT_S``, stop by ``SERVER_STOP_TIMEOUT_S``,
a proxy's ``close()`` by its own timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_servers import BasicAuthServer, Credentials, FaultProxy, basic_auth_server, create_user, make_ca_cert
from mlflow_server import MlflowServer

__all__ = ["auth_server", "auth_user", "fault_proxy", "tls_certs", "tls_front"]


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BasicAuthServer]:
    """A started basic-auth ``mlflow server``; ``.admin`` has the admin credentials."""
    server = basic_auth_server(tmp_path_factory.mktemp("auth_server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def auth_user(auth_server: BasicAuthServer) -> Credentials:
    """A new non-admin user of ``auth_server`` with EDIT permission (the server's default)."""
    name = f"user-{uuid.uuid4().hex[:12]}"
    return create_user(auth_server.uri, auth_server.admin, name, f"pw-{uuid.uuid4().hex}")


def _checked(proxy: FaultProxy) -> None:
    """A proxy that broke makes the test's result meaningless: report it as an error of the test."""
    if proxy.errors:
        pytest.fail(f"{proxy!r} failed internally: {proxy.errors!r}")


@pytest.fixture
def fault_proxy(mlflow_server: MlflowServer) -> Iterator[FaultProxy]:
    """A FaultProxy (faults off) in front of ``mlflow_server``; closed after the test."""
    with FaultProxy(mlflow_server.uri) as proxy:
        yield proxy
    _checked(proxy)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for 127.0.0.1; the certificate is its own CA."""
    return make_ca_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_front(mlflow_server: MlflowServer, tls_certs: tuple[Path, Path]) -> Iterator[FaultProxy]:
    """An HTTPS FaultProxy in front of ``mlflow_server``, trusted with MLFLOW_TRACKING_SERVER_CERT_PATH=cert.pem."""
    with FaultProxy(mlflow_server.uri, tls=tls_certs) as proxy:
        yield proxy
    _checked(proxy)
