"""A real PostgreSQL cluster on a free loopback port, for the team-server tests (standard library only).

    cluster = PostgresCluster()
    cluster.start()                      # initdb + pg_ctl start + wait until it accepts connections
    cluster.create_database("mlflow")
    uri = cluster.uri("mlflow")          # postgresql://postgres@127.0.0.1:PORT/mlflow
    cluster.psql("SELECT 1", "mlflow")   # -> "1"
    cluster.stop()                       # pg_ctl stop -m fast, then the cluster's folder is removed

The server binaries (``initdb``, ``pg_ctl``, ``postgres``) are looked up on ``PATH``, then in
``/usr/lib/postgresql/<version>/bin`` (newest first): Debian's ``postgresql`` package puts them there and
not on ``PATH``. ``PG_BIN`` (a folder) overrides both. None found is an error naming the package to install.

``initdb`` and ``postgres`` refuse to run as root: as root, they run as the ``postgres`` user (which the
Debian package creates). The cluster's folder is made under ``/tmp`` (not pytest's 0700 tmp_path, which that
user cannot reach) and owned by that user. Authentication is ``trust`` and the server listens on 127.0.0.1
only, with its Unix socket inside the cluster's folder. Every wait is bounded; a failure raises
:class:`PostgresError` with the command, its output and the tail of the server's log.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresError", "find_postgres_bin"]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH nor in "
    "/usr/lib/postgresql/*/bin. Install them with `apt-get install postgresql` (Debian/Ubuntu), "
    "or point PG_BIN at the folder that holds them."
)
SUPERUSER = "postgres"  # the database role created by initdb (-U)
OS_USER = "postgres"  # the unprivileged account the server runs as when we are root
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 60.0
_START_ATTEMPTS = 3  # a fresh port each time, when the port was taken between choosing and binding it
_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


class PostgresError(RuntimeError):
    pass


def _has_server_programs(folder: str | os.PathLike[str]) -> bool:
    return all(os.access(os.path.join(folder, name), os.X_OK) for name in _SERVER_PROGRAMS)


def _version_key(folder: str) -> tuple[int, ...]:
    version = os.path.basename(os.path.dirname(folder))  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_postgres_bin() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$PG_BIN``, else ``PATH`` (symlinks
    resolved, so the client programs beside them are found too), else the newest
    ``/usr/lib/postgresql/*/bin``. Raises :class:`PostgresError` naming ``apt-get install postgresql``."""
    override = os.environ.get("PG_BIN")
    if override:
        if _has_server_programs(override):
            return Path(override)
        raise PostgresError(f"PG_BIN={override!r} does not hold {', '.join(_SERVER_PROGRAMS)}. {INSTALL_HINT}")
    on_path = shutil.which("initdb")
    if on_path:
        folder = os.path.dirname(os.path.realpath(on_path))
        if _has_server_programs(folder):
            return Path(folder)
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _has_server_programs(folder):
            return Path(folder)
    raise PostgresError(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One throw-away PostgreSQL cluster: ``start()`` creates and starts it, ``stop()`` stops and deletes it."""

    def __init__(
        self,
        port: int | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``port`` None picks a free one (and another one if it is taken before the server binds it).
        ``settings`` are extra ``-c name=value`` server settings (e.g. ``{"max_connections": "200"}``)."""
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_postgres_bin()
        self._fixed_port = port
        self.port = port if port is not None else _free_port()
        self.host = "127.0.0.1"
        self.settings = dict(settings or {})
        self.root: Path | None = None  # the cluster's folder under /tmp, made by start()
        self._as_user = os.geteuid() == 0
        self._atexit_registered = False

    # ----------------------------------------------------------------- paths and commands

    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    @property
    def log_path(self) -> Path:
        return self._root / "postgres.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("the cluster has not been started")
        return self.root

    def uri(self, database: str) -> str:
        """A SQLAlchemy/libpq URI for ``database`` over TCP (trust authentication, no password)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _program(self, name: str) -> str:
        path = self.bin_dir / name
        if os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(name)  # client programs may live elsewhere (e.g. /usr/bin/psql)
        if found is None:
            raise PostgresError(f"{name} not found in {self.bin_dir} nor on PATH. {INSTALL_HINT}")
        return found

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except (OSError, PostgresError):
            return "<no postgres log>"

    def _run(self, args: Sequence[str], timeout: float, *, as_server_user: bool) -> str:
        """Run a program (as the ``postgres`` user when we are root and ``as_server_user``); its stdout."""
        kwargs: dict[str, object] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST/PGPORT/...
        env["LC_ALL"] = "C"
        if as_server_user and self._as_user:
            account = pwd.getpwnam(OS_USER)
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            env["HOME"] = str(self._root)
        try:
            proc = subprocess.run(
                list(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self._root,
                env=env,
                check=False,
                **kwargs,  # type: ignore[call-overload]
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(
                f"{' '.join(args)} did not finish within {timeout:.0f}s\n--- {self.log_path} (tail) ---\n"
                f"{self.log_tail()}"
            ) from exc
        if proc.returncode != 0:
            raise PostgresError(
                f"{' '.join(args)} exited with code {proc.returncode}\n--- output ---\n{proc.stdout}{proc.stderr}"
                f"\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
            )
        return str(proc.stdout)

    # ----------------------------------------------------------------- lifecycle

    def _make_root(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))  # /tmp: reachable by the postgres user
        root.chmod(0o755)
        if self._as_user:
            try:
                account = pwd.getpwnam(OS_USER)
            except KeyError as exc:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresError(
                    f"running as root, but there is no {OS_USER!r} account to run PostgreSQL as "
                    "(initdb refuses root). `apt-get install postgresql` creates it."
                ) from exc
            os.chown(root, account.pw_uid, account.pw_gid)
        self.root = root

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """initdb (once), then start the server and wait until it accepts connections."""
        if self.root is None:
            self._make_root()
            self._run(
                [self._program("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER,
                 "-E", "UTF8", "--no-locale", "--no-sync"],
                INITDB_TIMEOUT_S,
                as_server_user=True,
            )  # fmt: skip
            if not self._atexit_registered:
                atexit.register(self.stop)  # a session that dies between start and the fixture's finalizer
                self._atexit_registered = True
        last_error: PostgresError | None = None
        for attempt in range(_START_ATTEMPTS):
            if attempt and self._fixed_port is None:
                self.port = _free_port()
            options = [
                f"-p {self.port}",
                f"-k {self.data_dir}",
                "-c listen_addresses=127.0.0.1",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
            try:
                self._run(
                    [self._program("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                     "-o", " ".join(options), "-w", "-t", str(int(timeout)), "start"],
                    timeout + 10,
                    as_server_user=True,
                )  # fmt: skip
                self._wait_ready(time.monotonic() + timeout)
                return
            except PostgresError as exc:
                last_error = exc
                self._kill_postmaster()
                if "could not bind" not in self.log_tail().lower() or self._fixed_port is not None:
                    break
        assert last_error is not None
        raise last_error

    def _wait_ready(self, deadline: float) -> None:
        args = [self._program("pg_isready"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-t", "2"]
        while True:
            try:
                self._run(args, 10, as_server_user=False)
                return
            except PostgresError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        if self.root is None:
            return None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by another user (we are not root)
            return pid
        return pid

    def _kill_postmaster(self) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # the children notice the postmaster is gone and exit

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """``pg_ctl stop -m fast`` (SIGKILL if that fails), then delete the cluster's folder. Idempotent."""
        if self.root is None:
            return
        if self._postmaster_pid() is not None:
            try:
                self._run(
                    [self._program("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)),
                     "stop"],
                    timeout + 10,
                    as_server_user=True,
                )  # fmt: skip
            except PostgresError:
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    # ----------------------------------------------------------------- clients

    def psql(self, sql: str, database: str = "postgres", timeout: float = CLIENT_TIMEOUT_S) -> str:
        """Run ``sql`` with psql (unaligned, tuples only, stop on error); its output, stripped."""
        out = self._run(
            [self._program("psql"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            timeout,
            as_server_user=False,
        )  # fmt: skip
        return out.strip()

    def create_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.psql(f"CREATE DATABASE {name}")

    def __repr__(self) -> str:
        return f"PostgresCluster(port={self.port}, root={str(self.root)!r}, bin_dir={str(self.bin_dir)!r})"
