"""Reliability: what a user sees when the network or the tracking server misbehaves, and what is kept.

Run from the repository root::

    python benchmarks/bench_reliability.py                  # every case, about 2 minutes
    python benchmarks/bench_reliability.py --only 5,12      # some cases (the reference fit always runs)
    python benchmarks/bench_reliability.py --out table.md   # also write the table to a file

Each case runs once, for real, in a temporary folder: a Lightning fit (2 epochs x 8 steps, ``tests/tiny.py``)
with this package's ``MLflowLogger`` (``flush_timeout=10``) into a real local ``mlflow server``, behind the
test-suite's fault injection (``tests/fault_servers.py``: a TLS front with a private CA, a basic-auth server, a
fault proxy). Then at most one ``lightning-mlflow sync`` (only when a journal is left), and the run is read back
through ``MlflowClient``.

Columns of the Markdown table (stdout, and ``--out``):

- *what the user sees*: the first warning or error of the ``lightning_mlflow_ext`` loggers, or the exception
  ``fit()`` raised; run ids, URIs and the temporary folder are shortened to ``<run>``, ``<uri>``, ``<tmp>``.
- *points stored / expected*: every point of every metric key of the run (``get_metric_history``), against a
  reference fit of the same model into the plain server, run first.
- *duplicates*: (key, step) pairs stored more often than the reference fit stores them.
- *fit held*: seconds from the last training batch's end to ``fit()`` returning (validation, ``finalize``).
- *secrets leaked*: occurrences of the password or token the case used (plain and as the ``Authorization``
  header value) in the run's tags, params and artifacts, the journal, everything printed to stdout/stderr,
  every log record, the sync's output and the exception. Cases without a password run with a random
  ``MLFLOW_TRACKING_TOKEN`` (the plain server ignores it) so that there is something to leak.

Every case is bounded (``--case-timeout``, 120 s): past it the case is recorded as ``timeout``. Progress and
the full messages of every case go to stderr. A measurement, not a test: the exit code is 0 unless the script
itself breaks.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test-suite's servers, fault proxy and tiny model

CASE_TIMEOUT_S = 120.0
FLUSH_TIMEOUT_S = 10.0
HELD_SLACK_S = 2.0  # a fit held longer than flush_timeout + this is a finding
SYNC_TIMEOUT_S = 60.0
MESSAGE_CHARS = 120
#: Every variable a case may set; each case starts with all of them unset.
CASE_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
PACKAGE_LOGGER = "lightning_mlflow_ext"

Env = dict[str, str | None]
Action = Callable[[Any], object]  # called with the case's MLflowLogger after a training step


def progress(message: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one process, many cases


@contextlib.contextmanager
def environ(values: Env) -> Iterator[None]:
    """Unset every variable a case may use, set ``values`` (``None``: unset), and restore os.environ after."""
    names = set(CASE_ENV_VARS) | set(values)
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in CASE_ENV_VARS:
            os.environ.pop(name, None)
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CaseTimeout(BaseException):
    """Raised in the main thread when a case passes its time bound (a BaseException: no ``except Exception``
    in the package or in Lightning swallows it)."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after ``seconds`` (SIGALRM interrupts blocking waits too)."""

    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"case took more than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Output:
    text: str = ""


@contextlib.contextmanager
def captured_output(folder: Path, result: Output) -> Iterator[Output]:
    """Everything written to file descriptors 1 and 2 (Python, C code, threads) while inside, into ``result``."""
    sys.stdout.flush()
    sys.stderr.flush()
    files = [(fd, open(folder / f"fd{fd}.txt", "w+b")) for fd in (1, 2)]  # noqa: SIM115 - closed below
    saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    try:
        for fd, handle in files:
            os.dup2(handle.fileno(), fd)
        yield result
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        parts = []
        for _, handle in files:
            handle.seek(0)
            parts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        result.text = "\n".join(parts)


class Records(logging.Handler):
    """Keeps the records it is given, formatted with their traceback."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[tuple[Records, Records]]:
    """(the package's warnings and errors, every record that reaches the root logger)."""
    package, everything = Records(), Records()
    package.setLevel(logging.WARNING)
    logging.getLogger(PACKAGE_LOGGER).addHandler(package)
    logging.getLogger().addHandler(everything)
    try:
        yield package, everything
    finally:
        logging.getLogger(PACKAGE_LOGGER).removeHandler(package)
        logging.getLogger().removeHandler(everything)


# --------------------------------------------------------------------------- cases


@dataclass
class Plan:
    """How one case runs: where the logger writes, what changes mid-fit, how the result is read back."""

    uri: str  # the tracking URI the logger is given
    read_uri: str  # where the run is read back from, without faults
    env: Env = field(default_factory=dict)  # for the fit
    read_env: Env = field(default_factory=dict)  # for reading the run back
    sync_env: Env = field(default_factory=dict)  # added to env for `lightning-mlflow sync`
    secrets: list[str] = field(default_factory=list)  # texts that must appear nowhere
    actions: dict[int, Action] = field(default_factory=dict)  # global step -> action(logger)
    before_sync: Action | None = None  # after the fit, before the sync (the fault is over)
    cleanup: Callable[[], None] | None = None
    fails_before_training: bool = False
    flush_timeout: float = FLUSH_TIMEOUT_S


@dataclass
class Case:
    number: int
    fault: str
    build: Callable[[Bench], Plan]


@dataclass
class Bench:
    """The servers every case shares, started once."""

    work: Path
    plain: Any  # MlflowServer
    outage: Any  # MlflowServer that cases stop and start
    auth: Any  # BasicAuthServer
    cert: Path
    key: Path
    proxies: list[Any] = field(default_factory=list)

    def token_env(self) -> tuple[Env, list[str]]:
        token = "tok-" + secrets.token_hex(16)
        return {"MLFLOW_TRACKING_TOKEN": token}, [token]

    def proxy(self, upstream: str, *, tls: bool = False) -> Any:
        from fault_servers import FaultProxy

        proxy = FaultProxy(upstream, tls=(self.cert, self.key) if tls else None)
        self.proxies.append(proxy)
        return proxy

    def user(self) -> Any:
        from fault_servers import create_user

        name = f"user-{uuid.uuid4().hex[:8]}"
        return create_user(self.auth.uri, self.auth.admin, name, "Secret-" + uuid.uuid4().hex)

    def admin_env(self) -> Env:
        return {
            "MLFLOW_TRACKING_USERNAME": self.auth.admin.username,
            "MLFLOW_TRACKING_PASSWORD": self.auth.admin.password,
        }


def basic_header(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def plain_case(bench: Bench) -> Plan:
    env, hidden = bench.token_env()
    return Plan(bench.plain.uri, bench.plain.uri, env=env, secrets=hidden)


def tls_trusted(bench: Bench) -> Plan:
    front = bench.proxy(bench.plain.uri, tls=True)
    env, hidden = bench.token_env()
    env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(bench.cert)
    return Plan(front.uri, bench.plain.uri, env=env, secrets=hidden, cleanup=front.close)


def tls_untrusted(bench: Bench) -> Plan:
    front = bench.proxy(bench.plain.uri, tls=True)
    env, hidden = bench.token_env()
    return Plan(front.uri, bench.plain.uri, env=env, secrets=hidden, cleanup=front.close, fails_before_training=True)


def wrong_password(bench: Bench) -> Plan:
    user = bench.user()
    wrong = "Wrong-" + uuid.uuid4().hex
    env: Env = {"MLFLOW_TRACKING_USERNAME": user.username, "MLFLOW_TRACKING_PASSWORD": wrong}
    return Plan(
        bench.auth.uri,
        bench.auth.uri,
        env=env,
        read_env=bench.admin_env(),
        secrets=[wrong, basic_header(user.username, wrong)],
        fails_before_training=True,
    )


def password_changed(bench: Bench) -> Plan:
    from fault_servers import change_password

    user = bench.user()
    new = "Renewed-" + uuid.uuid4().hex
    admin = bench.auth.admin
    env: Env = {"MLFLOW_TRACKING_USERNAME": user.username, "MLFLOW_TRACKING_PASSWORD": user.password}
    return Plan(
        bench.auth.uri,
        bench.auth.uri,
        env=env,
        read_env=bench.admin_env(),
        sync_env={"MLFLOW_TRACKING_PASSWORD": new},
        secrets=[
            user.password,
            new,
            admin.password,
            basic_header(user.username, user.password),
            basic_header(user.username, new),
            basic_header(admin.username, admin.password),
        ],
        actions={5: lambda _: change_password(bench.auth.uri, admin, user.username, new)},
    )


def proxied(bench: Bench, faults: Callable[[Any], object], env: Env | None = None) -> Plan:
    """A fault proxy in front of the plain server, faulty from the first request (run creation included)."""
    proxy = bench.proxy(bench.plain.uri)
    faults(proxy)
    token_env, hidden = bench.token_env()
    return Plan(
        proxy.uri,
        bench.plain.uri,
        env={**token_env, **(env or {})},
        secrets=hidden,
        before_sync=lambda _: proxy.clear_faults(),
        cleanup=proxy.close,
    )


def token_expired(bench: Bench) -> Plan:
    """401 from step 2 (an expired token), accepted again at step 12 (renewed). As in the test-suite, a flush at
    step 5 makes the writer meet the refusal: in a fit this short it would otherwise batch past it."""
    plan = proxied(bench, lambda _: None)
    proxy = bench.proxies[-1]
    plan.actions = {
        2: lambda _: proxy.unauthorized_after(0),
        5: lambda logger: logger.flush(timeout=5),
        12: lambda _: proxy.authorize(),
    }
    return plan


def outage(bench: Bench, stop_at: int, start_at: int | None) -> Plan:
    server = bench.outage
    env, hidden = bench.token_env()
    actions: dict[int, Action] = {stop_at: lambda _: server.stop()}
    if start_at is not None:
        actions[start_at] = lambda _: server.start()
    return Plan(
        server.uri,
        server.uri,
        env=env,
        secrets=hidden,
        actions=actions,
        before_sync=lambda _: server.start(),
        cleanup=server.start,  # the next case finds it up, whatever happened
    )


def run_deleted(bench: Bench) -> Plan:
    """Deleted at step 4 (after a flush, as in the test-suite: the writer then has the run's first points
    delivered and meets the deletion with the next ones); restored after the fit, then one sync."""
    from mlflow import MlflowClient

    plan = plain_case(bench)

    def delete(logger: Any) -> None:
        logger.flush(timeout=30)
        MlflowClient(bench.plain.uri).delete_run(logger.run_id)

    plan.actions = {4: delete}
    plan.before_sync = lambda logger: MlflowClient(bench.plain.uri).restore_run(logger.run_id)
    return plan


CASES = [
    Case(1, "none (plain server)", plain_case),
    Case(2, "TLS front, private CA given (`MLFLOW_TRACKING_SERVER_CERT_PATH`)", tls_trusted),
    Case(3, "TLS front, CA not given", tls_untrusted),
    Case(4, "basic auth, wrong password", wrong_password),
    Case(5, "basic auth, password changed at step 5; sync with the new one", password_changed),
    Case(6, "proxy: 503 on every 3rd request", lambda b: proxied(b, lambda p: p.fail_every(3, status=503))),
    Case(
        7,
        "proxy: 429 + `Retry-After: 1` on every 4th request",
        lambda b: proxied(b, lambda p: p.fail_every(4, status=429, retry_after=1)),
    ),
    Case(8, "proxy: every 4th connection reset", lambda b: proxied(b, lambda p: p.reset_every(4))),
    Case(
        9,
        "proxy: every 3rd log-batch answer held 4 s, `MLFLOW_HTTP_REQUEST_TIMEOUT=2`",
        lambda b: proxied(
            b, lambda p: p.stall_every(3, 4.0, path_contains="log-batch"), {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
        ),
    ),
    Case(10, "proxy: 401 from step 2, accepted again at step 12 (token renewed); a flush at step 5", token_expired),
    Case(11, "proxy: 300 ms latency on every request", lambda b: proxied(b, lambda p: setattr(p, "latency", 0.3))),
    Case(12, "server stopped at step 5, back only after the fit; one sync", lambda b: outage(b, 5, None)),
    Case(13, "server stopped at step 4, started again at step 11", lambda b: outage(b, 4, 11)),
    Case(14, "run deleted at step 4 (after a flush); restored after the fit, one sync", run_deleted),
]


# --------------------------------------------------------------------------- running a case


@dataclass
class Result:
    number: int
    fault: str
    seen: str = ""
    messages: list[str] = field(default_factory=list)  # every warning/error of the package, in full
    error: str | None = None  # the exception fit() raised
    trained_steps: int = 0
    held_s: float | None = None
    run_id: str | None = None
    status: str = "—"
    points: Counter[tuple[str, int]] = field(default_factory=Counter)
    synced: bool = False
    sync_returncode: int | None = None
    sync_output: str = ""
    journal_left: bool = False  # a journal still exists after the (at most one) sync
    leaks: Counter[str] = field(default_factory=Counter)  # where -> occurrences
    timeout: bool = False
    bound_s: float = CASE_TIMEOUT_S
    crash: str | None = None  # this script failed, not the package
    fails_before_training: bool = False
    seconds: float = 0.0
    proxy_errors: list[str] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)  # faults the proxy injected, by kind
    searched: dict[str, int] = field(default_factory=dict)  # where secrets were looked for -> characters


def make_marks(actions: dict[int, Action], logger: Any) -> Any:
    """A Callback that runs the case's actions after a training step and notes when the last batch ended."""
    from lightning.pytorch.callbacks import Callback

    class Marks(Callback):
        def __init__(self) -> None:
            self.last_batch_end: float | None = None
            self.steps = 0

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            action = actions.get(trainer.global_step)
            if action is not None:
                action(logger)
            self.steps = trainer.global_step
            self.last_batch_end = time.perf_counter()

    return Marks()


def shorten(text: str, replacements: dict[str, str]) -> str:
    for old, new in sorted(replacements.items(), key=lambda item: -len(item[0])):
        if old:
            text = text.replace(old, new)
    return re.sub(r"\s+", " ", text).strip()


def find_run_id(client: Any, experiment_name: str) -> str | None:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)  # deleted ones too
    return runs[0].info.run_id if runs else None


def run_text(client: Any, uri: str, run_id: str, folder: Path) -> dict[str, str]:
    """What a user can read of the run: tags, params, and every artifact's bytes."""
    import mlflow

    run = client.get_run(run_id)
    texts = {"tags": repr(run.data.tags), "params": repr(run.data.params)}
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder), tracking_uri=uri))
    texts["artifacts"] = "\n".join(
        path.read_bytes().decode("utf-8", "replace") for path in sorted(local.rglob("*")) if path.is_file()
    )
    return texts


def sync_command(path: Path) -> list[str]:
    exe = shutil.which("lightning-mlflow")
    head = [exe] if exe else [sys.executable, "-m", "lightning_mlflow_ext.commands"]
    return [*head, "sync", str(path), "--timeout", str(int(SYNC_TIMEOUT_S))]


def fit_and_sync(plan: Plan, experiment: str, folder: Path, result: Result, texts: dict[str, str]) -> None:
    """The fit, then one ``lightning-mlflow sync`` when a journal is left (the environment of the fit is set)."""
    from tiny import TinyData, TinyModel, make_trainer

    from lightning_mlflow_ext import MLflowLogger
    from lightning_mlflow_ext.delivery.journal import find_journals

    save_dir = folder / "save_dir"
    logger = MLflowLogger(
        experiment_name=experiment, tracking_uri=plan.uri, save_dir=save_dir, flush_timeout=plan.flush_timeout
    )
    marks = make_marks(plan.actions, logger)
    trainer = make_trainer(logger, callbacks=[marks], default_root_dir=str(folder))
    try:
        trainer.fit(TinyModel(), TinyData())
        returned = time.perf_counter()
        if marks.last_batch_end is not None:
            result.held_s = returned - marks.last_batch_end
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        texts["exception"] = traceback.format_exc()
    finally:
        result.trained_steps = marks.steps
    journals = find_journals(save_dir) if save_dir.exists() else []
    texts["journal"] = "\n".join(path.read_text(errors="replace") for path in journals)
    if journals:
        if plan.before_sync is not None:
            plan.before_sync(logger)
        with environ({**plan.env, **plan.sync_env}):
            done = subprocess.run(sync_command(save_dir), capture_output=True, text=True, timeout=SYNC_TIMEOUT_S + 30)
        result.synced = True
        result.sync_returncode = done.returncode
        result.sync_output = texts["sync"] = done.stdout + done.stderr
    result.journal_left = bool(find_journals(save_dir)) if save_dir.exists() else False


def execute(case: Case, plan: Plan, folder: Path, result: Result) -> None:
    """Run the case and read the run back; fills ``result``."""
    from mlflow import MlflowClient

    experiment = f"reliability-{case.number}-{uuid.uuid4().hex[:8]}"
    texts: dict[str, str] = {}
    output = Output()
    with captured_logs() as (package, everything):
        try:
            with captured_output(folder, output), environ(plan.env):
                fit_and_sync(plan, experiment, folder, result, texts)
        finally:
            texts["stdout/stderr"] = output.text
            texts["log records"] = "\n".join(everything.lines + package.lines)
            result.messages = [record.getMessage() for record in package.records]

    # Reading back is the benchmark's doing, not the user's: its output is not searched (MLflow logs at INFO).
    with environ(plan.read_env), captured_output(folder, Output()):
        client = MlflowClient(plan.read_uri)
        result.run_id = find_run_id(client, experiment)
        if result.run_id is not None:
            run = client.get_run(result.run_id)
            result.status = run.info.status + (" (deleted)" if run.info.lifecycle_stage == "deleted" else "")
            for key in run.data.metrics:
                for point in client.get_metric_history(result.run_id, key):
                    result.points[(key, point.step)] += 1
            texts.update(run_text(client, plan.read_uri, result.run_id, folder / "download"))

    result.searched = {where: len(text) for where, text in texts.items()}
    for where, text in texts.items():
        for secret in plan.secrets:
            if count := text.count(secret):
                result.leaks[where] += count

    replacements = {result.run_id or "": "<run>", str(folder): "<tmp>", plan.uri: "<uri>", plan.read_uri: "<uri>"}
    if result.error is not None:
        result.seen = shorten(result.error, replacements)
    elif result.messages:
        result.seen = shorten(result.messages[0], replacements)[:MESSAGE_CHARS]
        if len(result.messages) > 1:
            result.seen += f"… (+{len(result.messages) - 1} more)"
    else:
        result.seen = "nothing"


def run_case(bench: Bench, case: Case, timeout: float) -> Result:
    result = Result(case.number, case.fault, bound_s=timeout)
    folder = bench.work / f"case-{case.number:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan: Plan | None = None
    try:
        with time_bound(timeout):
            plan = case.build(bench)
            result.fails_before_training = plan.fails_before_training
            execute(case, plan, folder, result)
    except CaseTimeout:
        result.timeout = True
    except Exception as exc:
        result.crash = f"{type(exc).__name__}: {exc}"
        progress(f"case {case.number} crashed:\n{traceback.format_exc()}")
    finally:
        result.seconds = time.perf_counter() - started
        for proxy in bench.proxies:
            result.proxy_errors.extend(repr(error) for error in proxy.errors)
            result.injected.update(proxy.faults)
        try:
            if plan is not None and plan.cleanup is not None:
                plan.cleanup()
            for proxy in bench.proxies:
                proxy.close()
        except Exception as exc:
            progress(f"case {case.number}: cleanup failed: {exc!r}")
        bench.proxies.clear()
    return result


# --------------------------------------------------------------------------- report


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def seen_cell(result: Result) -> str:
    text = result.seen
    if len(text) > MESSAGE_CHARS and "… (+" not in text:
        text = text[:MESSAGE_CHARS] + "…"
    return cell(text)


def duplicates(result: Result, expected: Counter[tuple[str, int]]) -> int:
    return sum(1 for pair, n in result.points.items() if n > max(expected.get(pair, 0), 1))


def lost(result: Result, expected: Counter[tuple[str, int]]) -> int:
    return sum(max(n - result.points.get(pair, 0), 0) for pair, n in expected.items())


def row(result: Result, expected: Counter[tuple[str, int]]) -> str:
    total = sum(expected.values())
    if result.timeout:
        points = dups = status = held = leaks = "timeout"
        seen = f"timeout (> {result.bound_s:.0f} s)"
        return f"| {result.number}. {result.fault} | {seen} | {points} | {dups} | {status} | {held} | {leaks} |"
    if result.crash:
        crash = cell(result.crash[:MESSAGE_CHARS])
        return f"| {result.number}. {result.fault} | benchmark error: {crash} | — | — | — | — | — |"
    stored = sum(result.points.values())
    if result.fails_before_training and result.trained_steps == 0 and result.error is not None:
        points = f"{stored}/0 (fails before training)"
    else:
        points = f"{stored}/{total}"
        if result.synced:
            points += " after sync" if result.sync_returncode == 0 else f" (sync exit {result.sync_returncode})"
        if result.journal_left:
            points += ", journal left"
    held = "—" if result.held_s is None else f"{result.held_s:.1f} s"
    leaks = sum(result.leaks.values())
    return (
        f"| {result.number}. {result.fault} | {seen_cell(result)} | {points} | {duplicates(result, expected)} | "
        f"{result.status if result.run_id else 'no run'} | {held} | {leaks} |"
    )


def render(results: list[Result], expected: Counter[tuple[str, int]], reference: Result) -> str:
    keys = Counter(key for key, _ in expected.elements())
    per_key = ", ".join(f"{key} {n}" for key, n in sorted(keys.items()))
    lines = [
        "| fault | what the user sees | points stored / expected | duplicates | final status | fit held | "
        "secrets leaked |",
        "|---|---|---:|---:|---|---:|---:|",
        *(row(result, expected) for result in results),
        "",
        f"Expected: {sum(expected.values())} points ({per_key}), what the same fit stores into the plain server "
        f"(reference fit: held {reference.held_s or 0:.1f} s). Each case: `MLflowLogger(flush_timeout="
        f"{FLUSH_TIMEOUT_S:.0f})`, 2 epochs x 8 steps; the proxy faults of cases 6-9 and 11 are on from the first "
        "request (run creation included); at most one `lightning-mlflow sync` after the fit, only when a journal "
        "was left. Secrets: the case's password, or a random `MLFLOW_TRACKING_TOKEN`, looked for in the run's tags, "
        "params and artifacts, the journal, stdout/stderr, log records, the sync's output and the exception.",
    ]
    return "\n".join(lines)


def findings(results: list[Result], expected: Counter[tuple[str, int]]) -> list[str]:
    found = []
    total = sum(expected.values())
    for result in results:
        name = f"case {result.number} ({result.fault})"
        if result.timeout:
            found.append(f"{name}: timeout after {result.seconds:.0f} s")
            continue
        if result.crash:
            found.append(f"{name}: the benchmark itself failed: {result.crash}")
            continue
        if result.proxy_errors:
            found.append(f"{name}: the fault proxy failed internally: {result.proxy_errors}")
        if not (result.fails_before_training and result.trained_steps == 0 and result.error is not None):
            missing = lost(result, expected)
            if missing:
                found.append(f"{name}: {missing} of {total} points lost ({sum(result.points.values())} stored)")
            if result.error is not None:
                found.append(f"{name}: fit() raised {result.error}")
        elif result.points:
            found.append(f"{name}: failed before training but {sum(result.points.values())} points stored")
        dups = duplicates(result, expected)
        if dups:
            pairs = sorted(p for p, n in result.points.items() if n > max(expected.get(p, 0), 1))
            found.append(f"{name}: {dups} (key, step) pairs stored twice: {pairs[:10]}")
        if result.held_s is not None and result.held_s > FLUSH_TIMEOUT_S + HELD_SLACK_S:
            found.append(
                f"{name}: fit held {result.held_s:.1f} s after the last batch (flush_timeout {FLUSH_TIMEOUT_S:.0f})"
            )
        if result.leaks:
            found.append(f"{name}: secret found in {dict(result.leaks)}")
    return found


def details(results: list[Result]) -> str:
    lines = []
    for result in results:
        lines.append(
            f"--- case {result.number}: {result.fault} ({result.seconds:.1f} s, trained to step "
            f"{result.trained_steps}, run {result.run_id}, synced {result.synced} rc={result.sync_returncode})"
        )
        if result.injected:
            lines.append(f"    injected by the proxy: {dict(result.injected)}")
        if result.searched:
            lines.append(f"    secrets looked for in (characters): {result.searched}")
        if result.error:
            lines.append(f"    exception: {result.error}")
        lines.extend(f"    log: {message}" for message in result.messages)
        if result.sync_output.strip():
            lines.extend(f"    sync: {line}" for line in result.sync_output.strip().splitlines())
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--only", default=None, help="comma-separated case numbers (default: all)")
    parser.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case (default 120)")
    args = parser.parse_args(argv)
    numbers = [case.number for case in CASES]
    args.cases = numbers
    if args.only:
        try:
            wanted = {int(part) for part in args.only.split(",") if part.strip()}
        except ValueError:
            parser.error("--only takes case numbers, e.g. --only 5,12")
        unknown = sorted(wanted - set(numbers))
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from 1-{len(CASES)}")
        args.cases = sorted(wanted)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fault_servers import basic_auth_server, make_ca_cert
    from mlflow_server import MlflowServer, _free_port

    out_path = Path(args.out).resolve() if args.out else None
    old_cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # anything a library writes to the working directory lands in the temp folder
        servers = [
            MlflowServer(work / "plain", _free_port()),
            MlflowServer(work / "outage", _free_port()),
            basic_auth_server(work / "auth"),
        ]
        try:
            for server in servers:
                server.root.mkdir(parents=True, exist_ok=True)
                progress(f"starting {server!r}")
                server.start()
            cert, key = make_ca_cert(work / "tls")
            bench = Bench(work, servers[0], servers[1], servers[2], cert, key)

            progress("reference fit (plain server, no faults)")
            reference = run_case(bench, Case(0, "reference", plain_case), args.case_timeout)
            if reference.timeout or reference.crash or not reference.points:
                progress(f"the reference fit failed: {reference}")
                return 1
            expected = reference.points
            results = []
            for case in CASES:
                if case.number not in args.cases:
                    continue
                progress(f"case {case.number}: {case.fault}")
                results.append(run_case(bench, case, args.case_timeout))
                progress(f"case {case.number}: done in {results[-1].seconds:.1f} s")
        finally:
            for server in servers:
                server.stop()
            os.chdir(old_cwd)

    print(details([reference, *results]), file=sys.stderr)
    table = render(results, expected, reference)
    print(table)
    found = findings(results, expected)
    if found:
        print("\nFindings:\n" + "\n".join(f"- {line}" for line in found), file=sys.stderr)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(table + "\n")
        progress(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
