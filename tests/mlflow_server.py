"""A real ``mlflow server`` subprocess on a free loopback port (SQLite backend, proxied artifacts).

Used by the test-suite's ``mlflow_server`` fixture (``tests/conftest.py``) and by the benchmarks
(``benchmarks/bench_metrics.py``). Depends on the standard library only (plus the ``mlflow`` CLI it runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "SERVER_START_TIMEOUT_S",
    "SERVER_STOP_TIMEOUT_S",
    "_MLFLOW_ENV_VARS",
    "MlflowServer",
    "ServerStartError",
    "_die_with_parent",
    "_free_port",
    "_port_is_bindable",
]

_MLFLOW_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
)

SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
_START_ATTEMPTS = 5


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_bindable(port: int) -> bool:
    """True if nothing LISTENs on 127.0.0.1:port (TIME_WAIT leftovers are ignored via SO_REUSEADDR,
    the same option uvicorn sets on its listening socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server if the pytest process dies without running its finalizers."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    pass


class MlflowServer:
    """A real ``mlflow server`` subprocess that can be stopped and restarted on the same port."""

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        backend_store_uri: str | None = None,
        workers: int = 1,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``extra_args`` go on the command line (e.g. ``["--app-name", "basic-auth"]``); ``env`` is added to
        the server's environment (e.g. ``MLFLOW_AUTH_CONFIG_PATH``)."""
        self.root = root
        self.port = port
        self.host = "127.0.0.1"
        self.uri = f"http://{self.host}:{port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.workers = workers
        self.extra_args = list(extra_args)
        self.artifacts_dir = root / "artifacts"
        self.log_path = root / "server.log"
        self.startup_seconds: list[float] = []  # wall time of each successful start()
        self._proc: subprocess.Popen[bytes] | None = None
        server_env = {k: v for k, v in os.environ.items() if k not in _MLFLOW_ENV_VARS}
        # The huey job runner (GenAI jobs/trace rollups) spawns ~7 extra processes; we don't need it.
        server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        server_env.update(env or {})
        self._env = server_env  # frozen at session start so later monkeypatching can't leak into restarts

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination", str(self.artifacts_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
            *self.extra_args,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, n_chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no server log>"

    def _healthy(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(f"{self.uri}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_port_free(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if _port_is_bindable(self.port):
                return True
            time.sleep(0.2)
        return _port_is_bindable(self.port)

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        """Start (or restart) the server on the same port and backend; block until /health answers."""
        if self.running:
            return
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        problem = "timed out"
        for attempt in range(1, _START_ATTEMPTS + 1):
            if not self._wait_port_free(deadline):
                problem = f"port {self.port} still in use"
                break
            with open(self.log_path, "ab") as log:
                log.write(f"\n=== start attempt {attempt}: {' '.join(self.command)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=self._env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if self._healthy():
                    self.startup_seconds.append(time.monotonic() - t0)
                    return
                time.sleep(0.25)
            if self._proc.poll() is None:  # still running but not healthy in time
                problem = "timed out"
                break
            problem = f"server exited with code {self._proc.returncode}"
            tail = self.log_tail(3000).lower()
            if "address already in use" not in tail or time.monotonic() >= deadline:
                break
            time.sleep(1.0)  # port raced back into use (e.g. TIME_WAIT / another process): retry
        self.stop()
        raise ServerStartError(
            f"mlflow server did not become healthy at {self.uri}/health within {timeout:.0f}s "
            f"({problem}).\ncommand: {' '.join(self.command)}\n--- {self.log_path} (tail) ---\n"
            f"{self.log_tail()}"
        )

    def process_group(self) -> list[int]:
        """Pids of the server's process group (the server and its workers); empty when it is not running."""
        leader = self._proc.pid if self._proc is not None else None
        found: list[int] = []
        for entry in os.scandir("/proc") if leader is not None else []:
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError), open(os.path.join(entry.path, "stat")) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == leader:
                        found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's process group has used so far."""
        ticks = 0
        for pid in self.process_group():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT_S) -> None:
        """Terminate the server (SIGTERM, SIGKILL to its process group after ``timeout``) and wait
        until its port no longer has a listener."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # the mlflow CLI forwards SIGTERM to uvicorn and waits for it
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # Reap anything still alive in the server's own session (pgid == our child's pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if not self._wait_port_free(time.monotonic() + timeout):
            warnings.warn(f"port {self.port} still has a listener after stopping mlflow server", stacklevel=2)

    def __repr__(self) -> str:
        return f"MlflowServer(uri={self.uri!r}, running={self.running}, root={str(self.root)!r})"
