"""The writer's HTTP path sends what MLflow's own client sends: same credentials, same headers, same endpoint.

A real HTTP server on loopback records each request; the same credentials go once through MLflow's
``http_request`` and once through this package's transport, and the two requests must carry the same auth.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from lightning_mlflow_ext.delivery.faults import DeliveryError
from lightning_mlflow_ext.delivery.transport import LOG_BATCH, Endpoint, HttpTransport


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.seen.append((self.path, dict(self.headers), body))
        payload = b"{}" if Recorder.status == 200 else b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "no"}'
        self.send_response(Recorder.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_PUT = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    Recorder.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _auth_sent_by_mlflow(uri: str) -> str | None:
    http_request(get_default_host_creds(uri), LOG_BATCH, "POST", max_retries=0, data="{}")
    return Recorder.seen.pop()[1].get("Authorization")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MLFLOW_TRACKING_USERNAME": "ada", "MLFLOW_TRACKING_PASSWORD": "s3cr:et"},
        {"MLFLOW_TRACKING_TOKEN": "tok-123"},
    ],
    ids=["no auth", "basic", "token"],
)
def test_the_writer_sends_the_credentials_mlflow_sends(recorder, monkeypatch, env):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = _auth_sent_by_mlflow(recorder)

    HttpTransport(recorder).log_batch("r1", metrics=[("loss", 0.5, 1000, 3), ("nan", float("nan"), 1000, 3)])

    path, headers, body = Recorder.seen.pop()
    assert path == LOG_BATCH
    assert headers.get("Authorization") == expected
    assert (expected is not None) == bool(env)
    assert headers["Content-Type"] == "application/json"
    assert "mlflow-python-client" in headers["User-Agent"]  # MLflow's own request-header providers
    assert json.loads(body) == {
        "run_id": "r1",
        "metrics": [
            {"key": "loss", "value": 0.5, "timestamp": 1000, "step": 3},
            {"key": "nan", "value": "NaN", "timestamp": 1000, "step": 3},
        ],
    }


@pytest.mark.parametrize("env", [{}, {"MLFLOW_TRACKING_TOKEN": "tok-123"}], ids=["no auth", "token"])
def test_a_file_goes_up_whole_with_the_credentials_mlflow_sends(recorder, monkeypatch, tmp_path, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = _auth_sent_by_mlflow(recorder)
    payload = bytes(range(256)) * 40_000  # 10 MB, every byte value
    local = tmp_path / "w.ckpt"
    local.write_bytes(payload)
    endpoint = Endpoint(recorder + "/api/2.0/mlflow-artifacts/artifacts/1/r1/artifacts")

    for _ in range(2):  # the second goes over the same kept-alive connection
        assert endpoint.put_file("/ck/w.ckpt", local, "application/octet-stream", 10)[0] == 200

    for path, headers, body in Recorder.seen:
        assert path == "/api/2.0/mlflow-artifacts/artifacts/1/r1/artifacts/ck/w.ckpt"
        assert headers.get("Authorization") == expected
        assert headers["Content-Type"] == "application/octet-stream"
        assert body == payload


def test_a_refusal_is_permanent_and_says_why(recorder):
    Recorder.status = 400
    with pytest.raises(DeliveryError, match="INVALID_PARAMETER_VALUE") as refused:
        HttpTransport(recorder).log_batch("r1", tags=[("a", "b")])
    assert not refused.value.transient


def test_an_unreachable_server_is_transient():
    with pytest.raises(DeliveryError, match="unreachable") as failed:
        HttpTransport("http://127.0.0.1:9", timeout=2).set_status("r1", "FINISHED", 1)
    assert failed.value.transient


def test_behind_a_proxy_a_file_goes_through_mlflows_client_whole(recorder, monkeypatch, tmp_path):
    # Only `requests` honours proxy settings, so a proxied server gets MLflow's own request path. The recorder
    # plays the proxy: it receives the absolute URL of the real destination.
    monkeypatch.setenv("http_proxy", recorder)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    payload = bytes(range(256)) * 4_000
    local = tmp_path / "w.ckpt"
    local.write_bytes(payload)

    status, _, _ = Endpoint("http://tracking.invalid:5000/api/2.0/mlflow-artifacts/artifacts/1/r1/artifacts").put_file(
        "/ck/w.ckpt", local, "application/octet-stream", 10
    )

    assert status == 200
    path, headers, body = Recorder.seen.pop()
    assert path == "http://tracking.invalid:5000/api/2.0/mlflow-artifacts/artifacts/1/r1/artifacts/ck/w.ckpt"
    assert "mlflow-python-client" in headers["User-Agent"]
    assert body == payload
