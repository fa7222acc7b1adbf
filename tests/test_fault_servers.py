"""The fault-injection infrastructure itself (tests/fault_servers.py), proven against real MLflow servers.

Each fault is checked from the client's side, through ``mlflow.MlflowClient``, so a test that uses a fault to
exercise the logger can rely on what the client actually sees. MLflow's own retries are switched off
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``) wherever they would otherwise turn a fault into minutes of back-off.
"""

from __future__ import annotations

import filecmp
import http.client
import json
import os
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from fault_servers import BasicAuthServer, Credentials, FaultProxy, change_password
from mlflow.exceptions import MlflowException
from mlflow_server import MlflowServer

pytestmark = pytest.mark.timeout(60)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TRUST_VARS = (
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


@pytest.fixture(autouse=True)
def _no_mlflow_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request per client call, and no inherited trust or credentials: what each test sees is its own doing."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name in _TRUST_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def experiment_id(mlflow_server: MlflowServer, experiment_name: str) -> str:
    """An experiment created directly on the server, so the proxy's counters start at zero."""
    return mlflow.MlflowClient(mlflow_server.uri).create_experiment(experiment_name)


def _error(call: Callable[[], object]) -> MlflowException | None:
    """The MlflowException one client call raised, or None."""
    try:
        call()
    except MlflowException as exc:
        return exc
    return None


def _outcome(call: Callable[[], object]) -> str:
    """``"ok"`` or the MLflow error code of one client call."""
    error = _error(call)
    return "ok" if error is None else str(error.error_code)


# --------------------------------------------------------------------------- TLS front


def test_tls_front_is_trusted_through_the_cert_path(
    tls_front: FaultProxy, tls_certs: tuple[Path, Path], experiment_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tls_certs[0]))
    assert tls_front.uri.startswith("https://127.0.0.1:")
    client = mlflow.MlflowClient(tls_front.uri)
    run = client.create_run(client.create_experiment(experiment_name))
    client.log_metric(run.info.run_id, "loss", 0.5, step=3)
    assert [(m.value, m.step) for m in client.get_metric_history(run.info.run_id, "loss")] == [(0.5, 3)]
    assert tls_front.requests_by_path["/api/2.0/mlflow/runs/log-metric"] == 1


def test_tls_front_is_refused_without_trust(tls_front: FaultProxy) -> None:
    with pytest.raises(MlflowException, match=r"(?i)certificate verify failed|ssl"):
        mlflow.MlflowClient(tls_front.uri).search_experiments(max_results=1)
    assert tls_front.requests == 0  # the handshake failed: no HTTP request got through


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_tls_front_accepts_insecure_tls(
    tls_front: FaultProxy, experiment_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    client = mlflow.MlflowClient(tls_front.uri)
    assert client.get_experiment(client.create_experiment(experiment_name)).name == experiment_name


# --------------------------------------------------------------------------- basic-auth server


def test_basic_auth_checks_passwords_and_a_changed_password_revokes_the_old_one(
    auth_server: BasicAuthServer, auth_user: Credentials, experiment_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _NO_PROXY.open(f"{auth_server.uri}/health", timeout=10) as response:  # readiness needs no credentials
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _NO_PROXY.open(f"{auth_server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert anonymous.value.code == 401
    assert anonymous.value.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'

    client = mlflow.MlflowClient(auth_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_user.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_user.password + "-wrong")
    with pytest.raises(MlflowException, match="401") as wrong:
        client.search_experiments(max_results=1)
    assert wrong.value.error_code == "UNAUTHENTICATED"

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_user.password)
    run = client.create_run(client.create_experiment(experiment_name))  # a non-admin user may write (EDIT default)
    client.log_metric(run.info.run_id, "loss", 1.0, step=0)

    rotated = change_password(auth_server.uri, auth_server.admin, auth_user.username, "rotated-password-0001")
    assert _outcome(lambda: client.log_metric(run.info.run_id, "loss", 2.0, step=1)) == "UNAUTHENTICATED"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", rotated.password)
    client.log_metric(run.info.run_id, "loss", 3.0, step=2)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 3.0]


def test_a_user_can_change_its_own_password(
    auth_server: BasicAuthServer, auth_user: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotated = change_password(auth_server.uri, auth_user, auth_user.username, "self-rotated-password-1")
    client = mlflow.MlflowClient(auth_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_user.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_user.password)
    assert _outcome(lambda: client.search_experiments(max_results=1)) == "UNAUTHENTICATED"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", rotated.password)
    assert _outcome(lambda: client.search_experiments(max_results=1)) == "ok"


# --------------------------------------------------------------------------- fault proxy


def test_proxy_relays_mlflow_traffic_and_logs_it(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    run = client.create_run(experiment_id)
    for step in range(5):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 5
    assert fault_proxy.requests_by_path["/api/2.0/mlflow/runs/log-metric"] == 5
    assert ("POST", "/api/2.0/mlflow/runs/create", 200) in fault_proxy.log
    assert fault_proxy.requests == len(fault_proxy.log)
    assert not fault_proxy.faults


def test_latency_is_added_before_each_request(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.latency = 0.3
    t0 = time.monotonic()
    for _ in range(3):
        client.get_experiment(experiment_id)
    assert time.monotonic() - t0 >= 0.9  # only lower bounds: a loaded machine may add, never remove, time
    assert fault_proxy.requests == 3


def test_fail_every_second_request(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.fail_every(2, 503)
    errors = [_error(lambda: client.get_experiment(experiment_id)) for _ in range(6)]
    # With retries off, urllib3 gives up on a retryable status before MLflow reads the body: the client sees a
    # generic "too many 503 error responses" (INTERNAL_ERROR), not the body's TEMPORARILY_UNAVAILABLE.
    assert [e is None for e in errors] == [True, False] * 3
    assert all("503" in str(e) for e in errors[1::2])
    assert fault_proxy.requests == 6
    assert [e.status for e in fault_proxy.log] == [200, 503] * 3
    assert fault_proxy.faults["fail"] == 3


def test_a_failure_answer_is_mlflow_shaped(fault_proxy: FaultProxy) -> None:
    fault_proxy.fail_every(1, 503, retry_after=7)
    with pytest.raises(urllib.error.HTTPError) as failed:
        _NO_PROXY.open(f"{fault_proxy.uri}/api/2.0/mlflow/experiments/search", timeout=10)
    assert failed.value.code == 503
    assert failed.value.headers["Retry-After"] == "7"
    assert json.loads(failed.value.read())["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_retry_after_reaches_mlflow_which_waits_and_retries(
    fault_proxy: FaultProxy, experiment_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.fail_every(2, 429, retry_after=1)
    client.get_experiment(experiment_id)  # request 1 passes
    t0 = time.monotonic()
    client.get_experiment(experiment_id)  # request 2 gets 429 + Retry-After: 1, the retry (request 3) passes
    assert 1.0 <= time.monotonic() - t0 < 5
    assert [e.status for e in fault_proxy.log] == [200, 429, 200]


def test_health_is_spared_but_counted(mlflow_server: MlflowServer, fault_proxy: FaultProxy) -> None:
    fault_proxy.fail_every(1, 500)
    with _NO_PROXY.open(f"{fault_proxy.uri}/health", timeout=10) as response:
        assert response.status == 200
    assert fault_proxy.requests_by_path["/health"] == 1
    with FaultProxy(mlflow_server.uri, spare_health=False) as strict:
        strict.fail_every(1, 500)
        with pytest.raises(urllib.error.HTTPError) as failed:
            _NO_PROXY.open(f"{strict.uri}/health", timeout=10)
        assert failed.value.code == 500


def test_unauthorized_after_n_until_authorized(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.unauthorized_after(2)
    outcomes = [_outcome(lambda: client.get_experiment(experiment_id)) for _ in range(4)]
    with pytest.raises(urllib.error.HTTPError) as challenge:
        _NO_PROXY.open(f"{fault_proxy.uri}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", timeout=10)
    fault_proxy.authorize()
    outcomes.append(_outcome(lambda: client.get_experiment(experiment_id)))
    assert outcomes == ["ok", "ok", "UNAUTHENTICATED", "UNAUTHENTICATED", "ok"]
    assert challenge.value.code == 401
    assert challenge.value.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'


def test_reset_every_second_request(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.reset_every(2)
    client.get_experiment(experiment_id)
    with pytest.raises(MlflowException, match=r"(?i)connection (reset|aborted)|remote ?disconnected"):
        client.get_experiment(experiment_id)
    client.get_experiment(experiment_id)  # the client reconnects
    assert [e.status for e in fault_proxy.log] == [200, None, 200]
    assert fault_proxy.faults["reset"] == 1


def test_stall_outlasts_the_client_timeout_yet_the_server_processes_the_request(
    fault_proxy: FaultProxy, mlflow_server: MlflowServer, experiment_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    run_id = mlflow.MlflowClient(mlflow_server.uri).create_run(experiment_id).info.run_id
    client = mlflow.MlflowClient(fault_proxy.uri)
    fault_proxy.stall_every(1, 5)
    t0 = time.monotonic()
    with pytest.raises(MlflowException, match=r"(?i)timeout"):
        client.set_tag(run_id, "reached", "yes")
    assert time.monotonic() - t0 < 4  # the client gave up (1 s timeout) before the stall ended
    # Only the answer was late: the tag is there, so a client's retry would send it a second time.
    assert mlflow.MlflowClient(mlflow_server.uri).get_run(run_id).data.tags["reached"] == "yes"
    assert fault_proxy.faults["stall"] == 1


def test_refuse_then_accept(fault_proxy: FaultProxy, experiment_id: str) -> None:
    client = mlflow.MlflowClient(fault_proxy.uri)
    client.get_experiment(experiment_id)  # leaves a pooled keep-alive connection, which refuse() must drop
    fault_proxy.refuse()
    with pytest.raises(MlflowException, match=r"(?i)refused"):
        client.get_experiment(experiment_id)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5).close()
    fault_proxy.accept()
    assert client.get_experiment(experiment_id).experiment_id == experiment_id
    assert fault_proxy.requests == 2


def test_a_stopped_upstream_is_a_502(tmp_path: Path) -> None:
    port = _unused_port()
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy, pytest.raises(urllib.error.HTTPError) as failed:
        _NO_PROXY.open(f"{proxy.uri}/api/2.0/mlflow/experiments/search", timeout=10)
    assert failed.value.code == 502


def test_close_is_bounded_while_a_response_is_stalled(mlflow_server: MlflowServer) -> None:
    proxy = FaultProxy(mlflow_server.uri)
    proxy.stall_every(1, 60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _NO_PROXY.open(f"{proxy.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30).read()
        except Exception as exc:
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 10
    while not proxy.faults["stall"] and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    proxy.close()
    assert time.monotonic() - t0 < 2
    caller.join(5)
    assert not caller.is_alive() and errors  # the stalled client saw its connection close
    assert not [t for t in threading.enumerate() if t.name.startswith(f"fault-proxy-{proxy.port}")]


def test_a_100mb_artifact_streams_through_the_proxy(
    fault_proxy: FaultProxy, mlflow_server: MlflowServer, experiment_id: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1024 * 1024))
    client = mlflow.MlflowClient(fault_proxy.uri)
    run_id = client.create_run(experiment_id).info.run_id
    tracemalloc.start()
    try:
        client.log_artifact(run_id, str(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # neither MLflow's client nor the proxy held the body in memory
    upload = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/big.bin"
    assert ("PUT", upload, 200) in fault_proxy.log
    back = client.download_artifacts(run_id, "big.bin", str(tmp_path / "back"))
    assert filecmp.cmp(big, back, shallow=False)


# --------------------------------------------------------------------------- HTTP framing (no MLflow answers these)


class _ChunkedHandler(BaseHTTPRequestHandler):
    """A keep-alive upstream whose answers are chunked, as uvicorn's streaming responses are."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in (b"echo:", body, b""):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def chunked_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_chunked_responses_are_relayed_on_a_keep_alive_connection(chunked_upstream: str) -> None:
    with FaultProxy(chunked_upstream) as proxy:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            for payload in (b"one", b"x" * 100_000, b"three"):
                connection.request("POST", "/echo?q=1", body=payload)
                response = connection.getresponse()
                assert response.getheader("Transfer-Encoding") == "chunked"
                assert response.read() == b"echo:" + payload
        finally:
            connection.close()
        assert proxy.requests_by_path["/echo"] == 3


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
