"""Loopback fault injection for tests and benchmarks: a fault proxy, a TLS front and a basic-auth MLflow server.

The test-suite runs against real servers, never mocks; these helpers put a real, misbehaving network between
MLflow's client and a real ``mlflow server``:

``FaultProxy``
    A threaded HTTP/1.1 reverse proxy on a free 127.0.0.1 port. It relays requests one by one (keep-alive,
    ``Content-Length`` and chunked bodies streamed both ways) so it can act on each request: add latency, answer
    503/500/429 or 401, reset the connection, hold a response past the client's timeout, or refuse connections.
    With ``tls=(cert, key)`` it is an HTTPS front for a plain-HTTP server.
``make_ca_cert``
    A self-signed certificate for 127.0.0.1 that is its own CA, so ``MLFLOW_TRACKING_SERVER_CERT_PATH=cert.pem``
    makes MLflow's client trust the TLS front.
``basic_auth_server`` / ``create_user`` / ``change_password``
    An ``mlflow server --app-name basic-auth`` and the two admin calls a test needs to add a user and to revoke
    a user's credentials mid-fit.

Standard library only (plus ``mlflow_server`` beside it and the ``openssl`` and ``mlflow`` executables), so
benchmarks can import it without pytest.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import select
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

from mlflow_server import MlflowServer, _free_port

__all__ = [
    "AuthApiError",
    "BasicAuthServer",
    "Credentials",
    "Exchange",
    "FaultProxy",
    "basic_auth_server",
    "change_password",
    "create_user",
    "make_ca_cert",
]

# --------------------------------------------------------------------------- certificates


def make_ca_cert(folder: Path | str, *, days: int = 2) -> tuple[Path, Path]:
    """Write a self-signed certificate for ``127.0.0.1`` (its own CA) and its key; return ``(cert, key)`` paths.

    The subjectAltName ``IP:127.0.0.1`` matters: clients match an IP address against the SAN, not the CN.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-days", str(days), "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


# --------------------------------------------------------------------------- HTTP/1.1 framing

_MAX_LINE = 65536
_COPY_CHUNK = 256 * 1024
_RETRYABLE_BODY = 1024 * 1024  # request bodies up to this size are buffered so a stale upstream can be retried
_ERROR_CODES = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
}


class _Eof(ConnectionError):
    """The peer closed the connection in the middle of a message."""


def _read_line(src: io.BufferedReader) -> bytes:
    line = src.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ConnectionError("HTTP line too long")
    return line


def _read_head(src: io.BufferedReader) -> tuple[bytes, list[tuple[str, str]]] | None:
    """Read a start line and its header fields; ``None`` when the peer closed cleanly before a new message."""
    line = _read_line(src)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between messages (RFC 9112 section 2.2)
        line = _read_line(src)
    if not line:
        return None
    headers: list[tuple[str, str]] = []
    while True:
        raw = _read_line(src)
        if not raw:
            raise _Eof("connection closed inside a header block")
        if raw in (b"\r\n", b"\n"):
            return line.rstrip(b"\r\n"), headers
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def _tokens(headers: list[tuple[str, str]], name: str) -> set[str]:
    return {t.strip().lower() for t in (_header(headers, name) or "").split(",") if t.strip()}


def _head_bytes(start: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = [start.decode("latin-1"), *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _copy_exact(src: io.BufferedReader, dst: Callable[[bytes], Any], n: int) -> None:
    while n > 0:
        data = src.read(min(n, _COPY_CHUNK))
        if not data:
            raise _Eof(f"connection closed with {n} body bytes missing")
        dst(data)
        n -= len(data)


def _copy_chunked(src: io.BufferedReader, dst: Callable[[bytes], Any]) -> None:
    """Relay a chunked body verbatim (sizes, extensions, data and trailers) up to and including its last CRLF."""
    while True:
        line = _read_line(src)
        if not line:
            raise _Eof("connection closed inside a chunked body")
        dst(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailer fields, then the empty line
                trailer = _read_line(src)
                if not trailer:
                    raise _Eof("connection closed inside chunked trailers")
                dst(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return
        _copy_exact(src, dst, size + 2)  # data and its CRLF


def _copy_until_eof(src: io.BufferedReader, dst: Callable[[bytes], Any]) -> None:
    while data := src.read1(_COPY_CHUNK):
        dst(data)


def _discard(_: bytes) -> None:
    return None


class _Body(NamedTuple):
    """How a message body is delimited: ``length`` bytes, chunked, or (responses only) until the peer closes."""

    length: int = 0
    chunked: bool = False
    until_eof: bool = False

    def copy(self, src: io.BufferedReader, dst: Callable[[bytes], Any]) -> None:
        if self.chunked:
            _copy_chunked(src, dst)
        elif self.until_eof:
            _copy_until_eof(src, dst)
        else:
            _copy_exact(src, dst, self.length)


def _request_body(headers: list[tuple[str, str]]) -> _Body:
    if "chunked" in _tokens(headers, "Transfer-Encoding"):
        return _Body(chunked=True)
    length = _header(headers, "Content-Length")
    return _Body(length=int(length.split(",")[0])) if length else _Body()


def _response_body(method: str, status: int, headers: list[tuple[str, str]]) -> _Body:
    if method == "HEAD" or status < 200 or status in (204, 304):
        return _Body()
    if "chunked" in _tokens(headers, "Transfer-Encoding"):
        return _Body(chunked=True)
    length = _header(headers, "Content-Length")
    return _Body(length=int(length.split(",")[0])) if length is not None else _Body(until_eof=True)


def _wants_close(version: bytes, headers: list[tuple[str, str]]) -> bool:
    connection = _tokens(headers, "Connection")
    return "close" in connection or (version.upper() == b"HTTP/1.0" and "keep-alive" not in connection)


class _Request(NamedTuple):
    start: bytes  # the request line, as sent
    method: str
    path: str  # without the query string
    headers: list[tuple[str, str]]
    body: _Body
    close: bool  # the client asked to close the connection after this request


def _read_request(src: io.BufferedReader) -> _Request | None:
    head = _read_head(src)
    if head is None:
        return None
    start, headers = head
    try:
        method, target, version = start.split(b" ", 2)
    except ValueError:
        raise ConnectionError(f"malformed request line {start!r}") from None
    path = urlsplit(target.decode("latin-1")).path or "/"
    return _Request(
        start, method.decode("latin-1"), path, headers, _request_body(headers), _wants_close(version, headers)
    )


# --------------------------------------------------------------------------- fault rules


class Exchange(NamedTuple):
    """One request seen by a :class:`FaultProxy`: ``status`` is what the client was sent, ``None`` for a reset
    connection or when the upstream gave no answer."""

    method: str
    path: str
    status: int | None


@dataclass
class _EveryNth:
    """Fires on every ``n``-th matching request counted from the moment the rule was set."""

    n: int
    path_contains: str | None
    seen: int = 0

    def counts(self, path: str) -> bool:
        """Count the request if it matches the rule's path filter."""
        if self.path_contains is not None and self.path_contains not in path:
            return False
        self.seen += 1
        return True

    def fires(self, path: str) -> bool:
        return self.counts(path) and self.seen % self.n == 0


@dataclass
class _After(_EveryNth):
    """Fires on every matching request after the first ``n`` counted from the moment the rule was set."""

    def fires(self, path: str) -> bool:
        return self.counts(path) and self.seen > self.n


@dataclass
class _Fail(_EveryNth):
    status: int = 503
    retry_after: int | None = None
    error_code: str | None = None


@dataclass
class _Stall(_EveryNth):
    seconds: float = 0.0


def _check_n(n: int) -> int:
    if isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a request count >= 0, got {n!r}")
    return n


class _Upstream:
    """One keep-alive connection from the proxy to the upstream server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=_COPY_CHUNK))

    def stale(self) -> bool:
        """True when the server closed (or wrote to) an idle connection: uvicorn drops idle ones after 5 s."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A threaded HTTP/1.1 reverse proxy in front of ``upstream`` that injects faults per request.

    Faults can be changed at any time from any thread (a test changes them mid-fit). Every rule counts matching
    requests from the moment it is set, so ``fail_every(2)`` fails the 2nd, 4th, ... request after the call.
    When several rules fire on one request: 401 beats reset beats failure; a stall holds a forwarded response.
    Requests for ``/health`` are counted but spared from every fault (latency included) when ``spare_health``,
    so readiness checks still see the server up.

    ``tls=(cert, key)`` serves HTTPS to the client; the upstream is always plain HTTP.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        upstream: str,
        *,
        tls: tuple[Path | str, Path | str] | None = None,
        port: int | None = None,
        spare_health: bool = True,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = upstream
        self._upstream_addr = (parts.hostname, parts.port)
        self.spare_health = spare_health
        self.host = "127.0.0.1"
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(str(tls[0]), str(tls[1]))
        self.scheme = "https" if tls else "http"

        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._latency = 0.0
        self._fail: _Fail | None = None
        self._reset: _EveryNth | None = None
        self._stall: _Stall | None = None
        self._unauthorized: _After | None = None
        self._requests = 0
        self._by_path: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._log: list[Exchange] = []
        self.errors: list[Exception] = []  # unexpected exceptions in handler threads: bugs of the proxy itself
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._accept_stop = threading.Event()

        self.port = port or 0  # 0: the first accept() binds a free port, and later ones reuse it
        self.accept()

    @property
    def uri(self) -> str:
        """The tracking URI to give MLflow: ``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ faults

    @property
    def latency(self) -> float:
        """Seconds added before each request is forwarded (or answered by a fault)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = float(seconds)

    def fail_every(
        self,
        n: int,
        status: int = 503,
        retry_after: int | None = None,
        *,
        error_code: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer every ``n``-th request with ``status`` and an MLflow-style JSON error, without forwarding it.

        ``retry_after`` adds a ``Retry-After`` header (whole seconds: the only number form HTTP allows, and
        urllib3 rejects others). ``n=0`` removes the rule.
        """
        rule = _Fail(_check_n(n), path_contains, status=status, retry_after=retry_after, error_code=error_code)
        with self._lock:
            self._fail = rule if n else None

    def reset_every(self, n: int, *, path_contains: str | None = None) -> None:
        """Reset (RST, no answer) the connection of every ``n``-th request after reading it. ``n=0`` removes it."""
        with self._lock:
            self._reset = _EveryNth(_check_n(n), path_contains) if n else None

    def stall_every(self, n: int, seconds: float, *, path_contains: str | None = None) -> None:
        """Hold the response to every ``n``-th request for ``seconds`` before relaying it.

        The request does reach the server, and is processed: only the answer is late. That is the case that
        makes a client's retry a duplicate. ``n=0`` removes the rule.
        """
        with self._lock:
            self._stall = _Stall(_check_n(n), path_contains, seconds=float(seconds)) if n else None

    def unauthorized_after(self, n: int, *, path_contains: str | None = None) -> None:
        """From the ``(n+1)``-th request on, answer 401 ``UNAUTHENTICATED`` with ``WWW-Authenticate: Basic``:
        credentials that expired mid-run. :meth:`authorize` lifts it (a refreshed token)."""
        with self._lock:
            self._unauthorized = _After(_check_n(n), path_contains)

    def authorize(self) -> None:
        """Stop answering 401 (see :meth:`unauthorized_after`)."""
        with self._lock:
            self._unauthorized = None

    def clear_faults(self) -> None:
        """Remove every fault and the latency; connections are accepted again. Counters are kept."""
        with self._lock:
            self._latency = 0.0
            self._fail = self._reset = self._stall = self._unauthorized = None
        self.accept()

    def refuse(self) -> None:
        """Stop listening, so new connections are refused, and drop open ones, as a server that went down would."""
        with self._lock:
            listener, thread = self._listener, self._accept_thread
            self._listener = self._accept_thread = None
            self._accept_stop.set()
        if thread is not None:
            thread.join(5)
        if listener is not None:
            listener.close()
        self._drop_connections()

    def accept(self) -> None:
        """Listen again on the same port (after :meth:`refuse`); no-op when already listening."""
        with self._lock:
            if self._listener is not None or self._closed.is_set():
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(128)
                listener.settimeout(0.2)  # the accept loop polls its stop flag at this pace
            except OSError:
                listener.close()
                raise
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._accept_stop = stop = threading.Event()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener, stop), name=f"fault-proxy-accept-{self.port}", daemon=True
            )
            self._accept_thread.start()

    # ------------------------------------------------------------------ counters

    @property
    def requests(self) -> int:
        """Requests received so far (``/health`` and faulted ones included)."""
        return self._requests

    @property
    def requests_by_path(self) -> Counter[str]:
        """A copy of the request count per path (query string removed)."""
        with self._lock:
            return Counter(self._by_path)

    @property
    def faults(self) -> Counter[str]:
        """A copy of how many faults of each kind were injected: ``fail``, ``reset``, ``stall``, ``unauthorized``."""
        with self._lock:
            return Counter(self._faults)

    @property
    def log(self) -> list[Exchange]:
        """A copy of the exchanges so far, in the order their answers were decided (before the client got them)."""
        with self._lock:
            return list(self._log)

    # ------------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, cut every connection and wait up to ``timeout`` seconds in all for the handler threads
        (daemons: one stuck in a write to a client that stopped reading cannot hold the process)."""
        self._closed.set()
        self.refuse()
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy(uri={self.uri!r}, upstream={self.upstream!r}, requests={self._requests})"

    # ------------------------------------------------------------------ internals

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), name=f"fault-proxy-{self.port}", daemon=True)
            with self._lock:
                if stop.is_set():
                    conn.close()
                    return
                self._sockets.add(conn)
                self._threads.add(thread)
            thread.start()

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the base method also unblocks an SSLSocket's read

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _serve(self, conn: socket.socket) -> None:
        client: socket.socket = conn
        rfile: io.BufferedReader | None = None
        upstream: _Upstream | None = None
        try:
            if self._tls is not None:
                client = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                self._track(conn, add=False)  # wrap_socket detached it: the SSL socket owns the descriptor now
                self._track(client, add=True)
                client.settimeout(10)  # a client that never finishes its handshake must not pin the thread
                client.do_handshake()
                client.settimeout(None)
            rfile = cast(io.BufferedReader, client.makefile("rb", buffering=_COPY_CHUNK))
            while not self._closed.is_set():
                keep, upstream = self._one_request(client, rfile, upstream)
                if not keep:
                    return
        except (OSError, ValueError):
            return  # the client or the upstream went away, or the proxy is closing: nothing to answer to
        except Exception as exc:  # kept for the test to see instead of a traceback on stderr from a thread
            with self._lock:
                self.errors.append(exc)
        finally:
            if upstream is not None:
                self._close_upstream(upstream)
            self._track(client, add=False)
            with contextlib.suppress(OSError):
                if rfile is not None:
                    rfile.close()  # a socket's descriptor stays open while a makefile() refers to it
                client.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _decide(self, method: str, path: str) -> tuple[str, float, _Fail | _Stall | None]:
        """Count the request and pick its fault: (kind, latency, rule). ``kind`` is "" when none applies."""
        with self._lock:
            self._requests += 1
            self._by_path[path] += 1
            if self.spare_health and path.rstrip("/").endswith("/health"):
                return "", 0.0, None
            unauthorized = self._unauthorized is not None and self._unauthorized.fires(path)
            reset = self._reset is not None and self._reset.fires(path)
            fail = self._fail is not None and self._fail.fires(path)
            stall = self._stall is not None and self._stall.fires(path)
            kind = ""
            rule: _Fail | _Stall | None = None
            if unauthorized:
                kind = "unauthorized"
            elif reset:
                kind = "reset"
            elif fail:
                kind, rule = "fail", self._fail
            elif stall:
                kind, rule = "stall", self._stall
            if kind:
                self._faults[kind] += 1
            return kind, self._latency, rule

    def _record(self, method: str, path: str, status: int | None) -> None:
        with self._lock:
            self._log.append(Exchange(method, path, status))

    def _one_request(
        self, client: socket.socket, rfile: io.BufferedReader, upstream: _Upstream | None
    ) -> tuple[bool, _Upstream | None]:
        """Handle one request on a client connection; return (keep the connection, the upstream connection)."""
        req = _read_request(rfile)
        if req is None:
            return False, upstream
        if "100-continue" in _tokens(req.headers, "Expect"):
            req = req._replace(headers=[(k, v) for k, v in req.headers if k.lower() != "expect"])
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        kind, latency, rule = self._decide(req.method, req.path)
        if latency and self._closed.wait(latency):
            return False, upstream
        if kind in ("reset", "unauthorized", "fail"):
            req.body.copy(rfile, _discard)  # read the request whole, so the connection stays in step
            return self._answer_fault(client, req, kind, rule), upstream
        return self._forward(client, rfile, req, upstream, rule if isinstance(rule, _Stall) else None)

    def _answer_fault(self, client: socket.socket, req: _Request, kind: str, rule: _Fail | _Stall | None) -> bool:
        """Answer (or reset) a request the upstream never sees; return whether the connection stays open."""
        if kind == "reset":
            self._record(req.method, req.path, None)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closing with SO_LINGER 0 sends RST
        if kind == "unauthorized":
            status, code, extra = 401, "UNAUTHENTICATED", [("WWW-Authenticate", 'Basic realm="mlflow"')]
            message = "Credentials were rejected (injected by FaultProxy.unauthorized_after)."
        else:
            assert isinstance(rule, _Fail)
            status, code = rule.status, rule.error_code or _ERROR_CODES.get(rule.status, "TEMPORARILY_UNAVAILABLE")
            extra = [] if rule.retry_after is None else [("Retry-After", str(int(rule.retry_after)))]
            message = f"Injected failure {status} for {req.method} {req.path} (FaultProxy.fail_every)."
        self._record(req.method, req.path, status)
        client.sendall(_error_response(status, code, message, req.close, extra))
        return not req.close

    def _forward(
        self,
        client: socket.socket,
        rfile: io.BufferedReader,
        req: _Request,
        upstream: _Upstream | None,
        stall: _Stall | None,
    ) -> tuple[bool, _Upstream | None]:
        """Send the request upstream and relay the answer, held for ``stall.seconds`` first when given."""
        upstream, response = self._send_upstream(rfile, req, upstream)
        if upstream is None or response is None:  # the upstream is down: answer as a reverse proxy would
            self._record(req.method, req.path, 502)
            message = f"FaultProxy could not reach {self.upstream}."
            client.sendall(_error_response(502, "TEMPORARILY_UNAVAILABLE", message, req.close))
            return not req.close, None
        status_line, headers = response
        status = int(status_line.split(b" ", 2)[1])
        while 100 <= status < 200 and status != 101:  # interim responses: relay them and read the final one
            client.sendall(_head_bytes(status_line, headers))
            if (response := _read_head(upstream.rfile)) is None:
                raise _Eof("upstream closed the connection after an interim response")
            status_line, headers = response
            status = int(status_line.split(b" ", 2)[1])
        body = _response_body(req.method, status, headers)
        upstream_close = body.until_eof or _wants_close(status_line.split(b" ", 1)[0], headers)
        self._record(req.method, req.path, status)
        if stall is not None and self._closed.wait(stall.seconds):
            return False, upstream
        client.sendall(_head_bytes(status_line, headers))
        body.copy(upstream.rfile, client.sendall)
        if upstream_close:
            self._close_upstream(upstream)
            return False, None  # the client reads until close, or was told the connection closes
        return not req.close, upstream

    def _send_upstream(
        self, rfile: io.BufferedReader, req: _Request, upstream: _Upstream | None
    ) -> tuple[_Upstream | None, tuple[bytes, list[tuple[str, str]]] | None]:
        """Send the request and read the answer's head; ``(None, None)`` when the upstream refuses connections.

        Bodies up to 1 MiB are buffered so that a keep-alive upstream connection found dead can be retried once
        on a new one; larger ones are streamed from the client straight to the upstream.
        """
        host, port = self._upstream_addr
        headers = [("Host", f"{host}:{port}"), *((k, v) for k, v in req.headers if k.lower() != "host")]
        head = _head_bytes(req.start, headers)
        buffered: bytes | None = None
        if not req.body.chunked and req.body.length <= _RETRYABLE_BODY:
            chunks: list[bytes] = []
            req.body.copy(rfile, chunks.append)
            buffered = b"".join(chunks)
        for attempt in (1, 2):
            if upstream is not None and (attempt == 2 or upstream.stale()):
                self._close_upstream(upstream)
                upstream = None
            fresh = upstream is None
            if upstream is None:
                try:
                    upstream = self._connect_upstream()
                except OSError:
                    if self._closed.is_set():
                        raise
                    if buffered is None:
                        req.body.copy(rfile, _discard)
                    return None, None
            try:
                upstream.sock.sendall(head if buffered is None else head + buffered)
                if buffered is None:
                    req.body.copy(rfile, upstream.sock.sendall)
                if (response := _read_head(upstream.rfile)) is None:
                    raise _Eof("upstream closed the connection before answering")
                return upstream, response
            except OSError:
                if attempt == 2 or fresh or buffered is None:
                    self._record(req.method, req.path, None)
                    raise
        raise AssertionError("unreachable")

    def _connect_upstream(self) -> _Upstream:
        sock = socket.create_connection(self._upstream_addr, timeout=10)
        sock.settimeout(None)  # the upstream may take long to answer; close() unblocks reads by shutdown
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(sock, add=True)
        if self._closed.is_set():
            sock.close()
            raise ConnectionError("proxy closed")
        return _Upstream(sock)

    def _close_upstream(self, upstream: _Upstream) -> None:
        self._track(upstream.sock, add=False)
        with contextlib.suppress(OSError):
            upstream.rfile.close()
            upstream.sock.close()


def _error_response(
    status: int, error_code: str, message: str, close: bool, extra: list[tuple[str, str]] | None = None
) -> bytes:
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(extra or [])]
    if close:
        headers.append(("Connection", "close"))
    return _head_bytes(f"HTTP/1.1 {status} {reason}".encode(), headers) + body


# --------------------------------------------------------------------------- basic-auth server


class Credentials(NamedTuple):
    username: str
    password: str


class AuthApiError(RuntimeError):
    """An auth REST call answered with an HTTP error; ``status`` and ``body`` say which."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


class BasicAuthServer(MlflowServer):
    """An ``mlflow server --app-name basic-auth``; ``admin`` holds the credentials it was bootstrapped with."""

    def __init__(self, root: Path, port: int, *, admin: Credentials, auth_config_path: Path, **kwargs: Any) -> None:
        super().__init__(root, port, **kwargs)
        self.admin = admin
        self.auth_config_path = auth_config_path


def basic_auth_server(
    root: Path | str,
    port: int | None = None,
    *,
    default_permission: str = "EDIT",
    workers: int = 1,
    auth_cache_seconds: int | None = None,
) -> BasicAuthServer:
    """Configure (not start) a basic-auth MLflow server under ``root``.

    MLflow ships no default admin password any more and refuses to bootstrap without one, so a random strong one
    is generated (``server.admin``). ``default_permission = EDIT`` lets a newly created user create and write
    experiments and runs without per-resource grants. The ``MLFLOW_AUTH_ADMIN_*`` variables are set too because
    MLflow lets them override the file even when empty.

    Every request is checked against a scrypt hash, about 0.35 s of server CPU here: a fit's traffic would crawl.
    So MLflow's credential cache is on (``auth_cache_seconds``, default 60 with one worker). A password change
    still takes effect at once on the worker that handles it, which with one worker is every request; with
    several workers the old password may keep working that long, so the default there is 0 (no cache).
    """
    if auth_cache_seconds is None:
        auth_cache_seconds = 60 if workers == 1 else 0
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    admin = Credentials("admin", "Adm1n-" + secrets.token_urlsafe(18))
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {admin.username}\n"
        f"admin_password = {admin.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {auth_cache_seconds}\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
    }
    return BasicAuthServer(
        root,
        port or _free_port(),
        admin=admin,
        auth_config_path=config,
        workers=workers,
        extra_args=["--app-name", "basic-auth"],
        env=env,
    )


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _auth_call(method: str, url: str, creds: Credentials, payload: dict[str, Any]) -> dict[str, Any]:
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with _NO_PROXY_OPENER.open(request, timeout=30) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise AuthApiError(method, url, exc.code, exc.read().decode(errors="replace")) from None
    result: dict[str, Any] = json.loads(text) if text.strip() else {}
    return result


def create_user(server_uri: str, admin: Credentials, username: str, password: str) -> Credentials:
    """Create a user (as ``admin``) and return its credentials. Passwords need at least 12 characters."""
    _auth_call("POST", f"{server_uri.rstrip('/')}/api/2.0/mlflow/users/create", admin, {
        "username": username, "password": password,
    })  # fmt: skip
    return Credentials(username, password)


def change_password(server_uri: str, creds: Credentials, username: str, new_password: str) -> Credentials:
    """Set ``username``'s password as ``creds`` (an admin, or the user itself): how a test revokes the
    credentials a running fit uses. A user changing its own password must prove the current one, so it is sent
    when ``creds`` are the user's."""
    payload = {"username": username, "password": new_password}
    if creds.username == username:
        payload["current_password"] = creds.password
    _auth_call("PATCH", f"{server_uri.rstrip('/')}/api/2.0/mlflow/users/update-password", creds, payload)
    return Credentials(username, new_password)
