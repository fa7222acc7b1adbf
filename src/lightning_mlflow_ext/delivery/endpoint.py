"""One MLflow server as MLflow's own client would reach it: its host credentials, request headers and TLS
settings, over one kept-alive connection, with one attempt per request and this package's timeout.

Used by the transport (tracking requests), the artifact store (the artifact proxy) and the server check.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import MlflowHostCreds, http_request


def is_http(tracking_uri: str) -> bool:
    """A tracking server reached over HTTP(S), rather than a local or plugin store."""
    return urllib.parse.urlsplit(tracking_uri).scheme in ("http", "https")


class Answer(NamedTuple):
    """A server's answer: status, body text, and the headers a fault is judged by (``Retry-After``)."""

    status: int
    text: str
    headers: Mapping[str, str]


#: How long resolved credentials and request headers are reused before they are read again.
CREDENTIALS_TTL_S = 60.0
#: Bytes per write when a file goes over TLS.
FILE_BLOCK = 1 << 20


def _plain_auth_header(creds: MlflowHostCreds) -> dict[str, str] | None:
    """The Authorization header MLflow's client would send, when the credentials are the plain kinds it builds
    itself (none, basic, bearer token); None when it needs its own machinery (an auth plugin, AWS SigV4, the
    Databricks SDK, OAuth, workspaces)."""
    special = (
        getattr(creds, "auth", None),
        getattr(creds, "aws_sigv4", False),
        getattr(creds, "use_databricks_sdk", False),
        getattr(creds, "client_secret", None),
        getattr(creds, "workspace_id", None),
        os.environ.get("MLFLOW_WORKSPACE", "").strip(),
        os.environ.get("MLFLOW_DATABRICKS_TRAFFIC_ID"),
    )
    if any(special):
        return None
    if creds.username and creds.password:
        pair = f"{creds.username}:{creds.password}".encode()
        return {"Authorization": "Basic " + base64.standard_b64encode(pair).decode()}
    if creds.token:
        return {"Authorization": f"Bearer {creds.token}"}
    return {}


def _send_file(conn: http.client.HTTPConnection, method: str, url: str, path: Path, headers: Mapping[str, str]) -> None:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        conn.putrequest(method, url, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(size)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        if conn.sock is None:
            raise ConnectionResetError("the connection closed before the body was sent")
        if isinstance(conn.sock, ssl.SSLSocket):  # TLS is done in user space: large writes, not sendfile
            while block := handle.read(FILE_BLOCK):
                conn.sock.sendall(block)
        else:
            conn.sock.sendfile(handle)


class _Connection:
    """One kept-alive ``http.client`` connection: a request costs the writer one send and one receive.

    ``requests`` adds about 4 ms of Python per request, each step of it taking the GIL back from training.
    """

    def __init__(self, url: str, creds: MlflowHostCreds) -> None:
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = ssl.create_default_context(cafile=creds.server_cert_path or None)
            if creds.ignore_tls_verification:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
            if creds.client_cert_path:
                self._context.load_cert_chain(creds.client_cert_path)
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False

    def request(
        self, method: str, endpoint: str, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> Answer:
        return self._exchange(method, endpoint, body, headers, timeout)

    def put_file(self, endpoint: str, path: Path, headers: Mapping[str, str], timeout: float) -> Answer:
        """PUT a file's bytes. Over plain HTTP the kernel sends them (``sendfile``): no copy through Python,
        and the GIL is free while they go."""
        return self._exchange("PUT", endpoint, path, headers, timeout)

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._conn

    def _exchange(
        self, method: str, endpoint: str, body: bytes | Path | None, headers: Mapping[str, str], timeout: float
    ) -> Answer:
        self._aborted = False
        for attempt in (1, 2):
            conn = self._connect(timeout)
            try:
                if isinstance(body, Path):
                    _send_file(conn, method, self._base + endpoint, body, headers)
                else:
                    conn.request(method, self._base + endpoint, body=body, headers=dict(headers))
                response = conn.getresponse()
                text = response.read().decode("utf-8", "replace")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2 or self._aborted:  # cut off on purpose: not a stale connection to retry
                    raise
                continue  # the server closed a kept-alive connection between two requests: open a new one
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            return Answer(response.status, text, dict(response.getheaders()))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        """From another thread: shut the socket down so a blocked send or receive fails at once."""
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _proxied(url: str) -> bool:
    """True when the environment routes ``url`` through a proxy (only ``requests`` honours that)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


class Endpoint:
    """Posts JSON to, and puts files on, a server with the credentials, headers and TLS settings MLflow's client
    would use.

    MLflow's ``http_request`` resolves credentials and every request-header provider on each call (a few
    failed imports included) and goes through ``requests``: on the writer thread, which shares the GIL with
    training, that is measurable. Here credentials and headers are resolved once a minute and the request
    goes over one kept-alive connection. Credentials this cannot reproduce (an auth plugin, AWS SigV4, the
    Databricks SDK, OAuth, workspaces) and proxied servers go through ``http_request``.
    """

    def __init__(self, tracking_uri: str) -> None:
        self._tracking_uri = tracking_uri
        self._lock = threading.Lock()
        self._resolved_at = -math.inf
        self._creds: MlflowHostCreds = get_default_host_creds(tracking_uri)  # type: ignore[no-untyped-call]
        self._headers: dict[str, str] | None = None
        self._connection: _Connection | None = None

    def _current(self) -> tuple[MlflowHostCreds, dict[str, str] | None, _Connection | None]:
        with self._lock:
            if time.monotonic() - self._resolved_at > CREDENTIALS_TTL_S:
                creds = get_default_host_creds(self._tracking_uri)  # type: ignore[no-untyped-call]
                auth = None if _proxied(creds.host) else _plain_auth_header(creds)
                self._headers = None if auth is None else {**resolve_request_headers(), **auth}  # type: ignore[no-untyped-call]
                if self._connection is None or creds.__dict__ != self._creds.__dict__:
                    if self._connection is not None:
                        self._connection.close()
                    self._connection = None if auth is None else _Connection(creds.host, creds)
                self._creds = creds
                self._resolved_at = time.monotonic()
            return self._creds, self._headers, self._connection

    def refresh(self) -> None:
        """Resolve credentials, headers and TLS settings again before the next request."""
        with self._lock:
            self._resolved_at = -math.inf

    def abort(self) -> None:
        """Make a request in flight on another thread fail at once (``http_request`` cannot be interrupted)."""
        connection = self._connection
        if connection is not None:
            connection.abort()

    def request(self, method: str, endpoint: str, body: str | None, timeout: float) -> Answer:
        """One attempt, no hidden retries: ``method`` on ``endpoint`` with a JSON ``body`` (or none)."""
        data = None if body is None else body.encode()

        def send(creds: MlflowHostCreds, headers: dict[str, str] | None, connection: _Connection | None) -> Answer:
            if headers is None or connection is None:
                return _through_mlflow(creds, method, endpoint, body, "application/json", timeout)
            return connection.request(method, endpoint, data, {**headers, "Content-Type": "application/json"}, timeout)

        return self._with_current_credentials(send)

    def post(self, endpoint: str, body: str, timeout: float) -> Answer:
        return self.request("POST", endpoint, body, timeout)

    def put_file(self, endpoint: str, path: Path, content_type: str, timeout: float) -> Answer:
        def send(creds: MlflowHostCreds, headers: dict[str, str] | None, connection: _Connection | None) -> Answer:
            if headers is None or connection is None:
                with open(path, "rb") as handle:
                    return _through_mlflow(creds, "PUT", endpoint, handle, content_type, timeout)
            return connection.put_file(endpoint, path, {**headers, "Content-Type": content_type}, timeout)

        return self._with_current_credentials(send)

    def _with_current_credentials(
        self, send: Callable[[MlflowHostCreds, dict[str, str] | None, _Connection | None], Answer]
    ) -> Answer:
        """Send; when refused for credentials (401/403), read them again, and send once more only if they changed
        (a renewed token or password): a request refused with the same credentials is not repeated."""
        creds, headers, connection = self._current()
        answer = send(creds, headers, connection)
        if answer.status not in (401, 403):
            return answer
        self.refresh()
        renewed = self._current()
        if (renewed[0].__dict__, renewed[1]) == (creds.__dict__, headers):
            return answer
        return send(*renewed)


def _through_mlflow(
    creds: MlflowHostCreds, method: str, endpoint: str, data: Any, content_type: str, timeout: float
) -> Answer:
    """One attempt through MLflow's own ``http_request``: for credentials and proxies only it can handle."""
    response = http_request(  # type: ignore[no-untyped-call]
        creds,
        endpoint,
        method,
        max_retries=0,
        timeout=timeout,
        raise_on_status=False,
        data=data,
        extra_headers={"Content-Type": content_type},
    )
    return Answer(int(response.status_code), str(response.text), dict(response.headers))
