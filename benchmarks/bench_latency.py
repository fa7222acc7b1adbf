"""Latency benchmark: a fit logging to an MLflow server 300 ms away, against the same server without the delay.

Run from the repository root::

    python benchmarks/bench_latency.py                       # 5 rounds of each configuration, 1000 steps (~2 min)
    python benchmarks/bench_latency.py --rounds 2 --steps 300  # smoke run, about a minute

One real ``mlflow server`` (SQLite backend, as in ``bench_metrics.py``) sits behind a loopback ``FaultProxy``
(``tests/fault_servers.py``). The logger always talks to the proxy; the two configurations differ only in the
proxy's ``latency``: ``fast`` (0) and ``300 ms`` (every request, ``/health`` included, waits 0.3 s before it is
forwarded). Rounds alternate the two configurations (and their order), after one warm-up fit of each.

Each fit is split by a callback into three phases, timed with ``time.perf_counter`` and with the proxy's request
counters read at each boundary:

``setup``  ``trainer.fit`` called -> the first training batch starts (run lookup/creation, hyperparameters, ...)
``loop``   the first training batch starts -> the last training batch ends
``end``    the last training batch ends -> ``trainer.fit`` returns (the drain, the run's final status, teardown)

The training thread's wait is also given in round trips: (median phase time behind 300 ms - median against the
fast server) / latency. Last, the writer's throughput at each latency: ``log_metrics`` far faster than any
server takes points (no Trainer), then ``flush()`` (``--drain-points``, 0 skips it). A loop that logs faster than
that leaves a backlog which the end of fit has to send.

Targets (from the issue): behind 300 ms, the loop takes at most 1.05x its time against the fast server, and
setup plus end of fit take at most 20 round trips. These are measurements, not tests: a miss prints MISS and the
exit code is still 0 (non-zero only when a fit crashes). ``--json PATH`` also writes every figure as JSON.

The training script's git state decides a few requests (a dirty tree uploads its diff), so the fits run as if
from ``train.py`` in a small temporary git repository, clean unless ``--dirty``; not from this checkout, whose
state changes while people work in it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_metrics import (  # benchmarks/ is on sys.path when this file runs; it puts tests/ there too
    MLFLOW_ENV_VARS,
    N_METRICS,
    _ratio_interval,
    db_point_counts,
    machine_info,
    progress,
    quiet_libraries,
    quiet_trainer,
)

TARGET_LOOP_RATIO = 1.05
TARGET_ROUND_TRIPS = 20  # setup + end of fit, per fit
DEFAULT_LATENCY_S = 0.3
BATCH_SIZE = 8
PHASES = ("setup", "loop", "end")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_ARTIFACT_EXPERIMENT = re.compile(r"(/mlflow-artifacts/artifacts/)\d+/")


# --------------------------------------------------------------------------- the fit


def _fit_parts(steps: int) -> tuple[Any, Any]:
    """bench_metrics' tiny regressor (Linear(32, 1), 10 metrics a step), with its hyperparameters saved as most
    LightningModules do (Lightning then calls ``log_hyperparams`` during setup)."""
    import lightning
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class TinyRegressor(lightning.LightningModule):
        def __init__(self, lr: float = 0.01, hidden: int = 32) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(hidden, 1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            detached = loss.detach()
            for i in range(N_METRICS):
                self.log(f"m{i}", detached + i, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH_SIZE, 32, generator=g)
    y = x @ torch.randn(32, 1, generator=g) + 0.1 * torch.randn(steps * BATCH_SIZE, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=False, num_workers=0)
    return TinyRegressor(), loader


def _phase_probe(proxy: Any, steps: int, logger: Any) -> Any:
    """A callback that notes time and the proxy's per-path request counts when the first training batch starts
    and when the last one ends (one ``requests_by_path`` copy at each; every other batch costs two attribute
    reads)."""
    from lightning.pytorch.callbacks import Callback

    class PhaseProbe(Callback):
        def __init__(self) -> None:
            self.first_start: tuple[float, Counter[str]] | None = None
            self.last_end: tuple[float, Counter[str]] | None = None
            self.queued_at_last_batch: int | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.first_start is None:
                self.first_start = (time.perf_counter(), proxy.requests_by_path)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step >= steps:
                self.last_end = (time.perf_counter(), proxy.requests_by_path)
                writer = getattr(logger._session, "_writer", None)  # private: the points still waiting to be sent
                with contextlib.suppress(Exception):
                    self.queued_at_last_batch = int(writer._worker.queued - writer._worker.done)

    return PhaseProbe()


@dataclass
class Fit:
    config: str
    seconds: dict[str, float]  # phase -> wall seconds
    requests: dict[str, Counter[str]]  # phase -> path -> requests
    queued_at_last_batch: int | None
    stored_points: int
    expected_points: int
    status: str

    @property
    def round_trips(self) -> dict[str, int]:
        return {phase: sum(self.requests[phase].values()) for phase in PHASES}


def run_fit(config: str, latency: float, proxy: Any, server: Any, steps: int, experiment: str, work: Path) -> Fit:
    from mlflow import MlflowClient

    from lightning_mlflow_ext import MLflowLogger

    save_dir = work / f"fit-{uuid.uuid4().hex[:8]}"
    save_dir.mkdir()
    proxy.latency = latency
    logger = MLflowLogger(experiment_name=experiment, tracking_uri=proxy.uri, save_dir=str(save_dir))
    model, loader = _fit_parts(steps)
    probe = _phase_probe(proxy, steps, logger)
    trainer = quiet_trainer(logger, steps, save_dir, callbacks=[probe])
    before = proxy.requests_by_path
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    t3 = time.perf_counter()
    after = proxy.requests_by_path
    proxy.latency = 0.0
    if trainer.global_step != steps or probe.first_start is None or probe.last_end is None:
        raise RuntimeError(f"fit ran {trainer.global_step} optimizer steps, expected {steps}")
    (t1, at_first), (t2, at_last) = probe.first_start, probe.last_end
    run_id = logger.run_id
    stored = db_point_counts(server.root / "mlflow.db", run_id)  # read from the store, not through the proxy
    return Fit(
        config=config,
        seconds={"setup": t1 - t0, "loop": t2 - t1, "end": t3 - t2},
        requests={
            "setup": _by_endpoint(at_first - before),
            "loop": _by_endpoint(at_last - at_first),
            "end": _by_endpoint(after - at_last),
        },
        queued_at_last_batch=probe.queued_at_last_batch,
        stored_points=sum(stored.get(f"m{i}", 0) for i in range(N_METRICS)),
        expected_points=N_METRICS * steps,
        status=str(MlflowClient(server.uri).get_run(run_id).info.status),
    )


def writer_throughput(
    latency: float, proxy: Any, server: Any, points: int, experiment: str, work: Path
) -> dict[str, Any]:
    """Points/s the background writer delivers at this latency: ``log_metrics`` (10 floats) called far faster
    than any server takes them, without a Trainer, then ``flush()``. Timed from the first call to flushed."""
    from lightning_mlflow_ext import MLflowLogger

    save_dir = work / f"drain-{uuid.uuid4().hex[:8]}"
    save_dir.mkdir()
    proxy.latency = latency
    logger = MLflowLogger(experiment_name=experiment, tracking_uri=proxy.uri, save_dir=str(save_dir))
    run_id = logger.run_id  # the run is created before the clock starts
    before = proxy.requests_by_path
    t0 = time.perf_counter()
    for step in range(points // N_METRICS):
        logger.log_metrics({f"m{i}": step * 0.001 + i for i in range(N_METRICS)}, step=step)
    undelivered = logger.flush(timeout=900)
    seconds = time.perf_counter() - t0
    requests = _by_endpoint(proxy.requests_by_path - before)
    logger.finalize("success")
    proxy.latency = 0.0
    stored = sum(db_point_counts(server.root / "mlflow.db", run_id).values())
    return {
        "points": points // N_METRICS * N_METRICS,
        "seconds": seconds,
        "points_per_s": points // N_METRICS * N_METRICS / seconds,
        "requests": sum(requests.values()),
        "stored": stored,
        "undelivered": undelivered,
    }


# --------------------------------------------------------------------------- the training script's git state


@contextlib.contextmanager
def script_in_repo(root: Path, dirty: bool) -> Any:
    """Make ``sys.argv[0]`` a committed ``train.py`` in a fresh git repository (the logger records the git state
    of the main script's folder); ``dirty`` modifies it and adds an untracked file. Restored afterwards."""
    repo = root / "train-repo"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text("# the training script\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
    env.update(GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    for args in (["init", "-q"], ["add", "train.py"], ["commit", "-q", "-m", "train.py"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)
    if dirty:
        script.write_text("# the training script, edited\n")
        (repo / "notes.txt").write_text("untracked\n")
    saved = sys.argv[0]
    sys.argv[0] = str(script)
    try:
        yield
    finally:
        sys.argv[0] = saved


# --------------------------------------------------------------------------- rounds and summary


@dataclass
class Config:
    name: str
    latency: float
    fits: list[Fit] = field(default_factory=list)
    drain: dict[str, Any] | None = None

    def seconds(self, phase: str) -> list[float]:
        return [fit.seconds[phase] for fit in self.fits]

    def median(self, phase: str) -> float:
        return statistics.median(self.seconds(phase))

    def trips(self, phase: str) -> list[int]:
        return [fit.round_trips[phase] for fit in self.fits]


def run_rounds(proxy: Any, server: Any, args: argparse.Namespace, work: Path) -> list[Config]:
    configs = [Config("fast", 0.0), Config(f"{args.latency * 1000:.0f} ms", args.latency)]
    experiment = f"bench-latency-{uuid.uuid4().hex[:8]}"
    for config in configs:  # warm-up: imports, first-fit costs, and the experiment exists from here on
        progress(f"warm-up fit, {config.name}")
        run_fit(config.name, config.latency, proxy, server, args.steps, experiment, work)
    for r in range(args.rounds):
        for config in configs if r % 2 == 0 else configs[::-1]:
            fit = run_fit(config.name, config.latency, proxy, server, args.steps, experiment, work)
            config.fits.append(fit)
            s, t = fit.seconds, fit.round_trips
            progress(
                f"round {r + 1}/{args.rounds} {config.name}: setup {s['setup']:.2f} s, loop {s['loop']:.2f} s, "
                f"end {s['end']:.2f} s; round trips {t['setup']} / {t['loop']} / {t['end']}; "
                f"stored {fit.stored_points:,}/{fit.expected_points:,}, {fit.status}"
            )
    if args.drain_points:
        for config in configs:
            progress(f"writer throughput, {config.name}: {args.drain_points:,} points")
            config.drain = writer_throughput(config.latency, proxy, server, args.drain_points, experiment, work)
            progress(f"writer throughput, {config.name}: {config.drain['points_per_s']:,.0f} points/s")
    return configs


def endpoint(path: str) -> str:
    """A request path with the run's id and experiment id (artifact uploads) replaced, so fits add up."""
    return _ARTIFACT_EXPERIMENT.sub(r"\1<experiment_id>/", _RUN_ID.sub("<run_id>", path))


def _methods(log: list[Any]) -> dict[str, str]:
    seen: dict[str, set[str]] = {}
    for exchange in log:
        seen.setdefault(endpoint(exchange.path), set()).add(exchange.method)
    return {path: "/".join(sorted(methods)) for path, methods in seen.items()}


def _by_endpoint(counts: Counter[str]) -> Counter[str]:
    merged: Counter[str] = Counter()
    for path, n in counts.items():
        merged[endpoint(path)] += n
    return merged


def _per_fit(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{statistics.median(counts):g} ({low}-{high})"


def summarize(configs: list[Config], methods: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    fast, slow = configs
    rows = []
    for config in configs:
        interval = _ratio_interval(config.seconds("loop"), fast.seconds("loop"))
        rows.append(
            {
                "config": config.name,
                "latency_s": config.latency,
                "loop_s": config.median("loop"),
                "loop_each_s": config.seconds("loop"),
                "loop_ratio": config.median("loop") / fast.median("loop"),
                "loop_ratio_interval_90": None if config is fast else interval,
                "setup_s": config.median("setup"),
                "end_s": config.median("end"),
                "round_trips": {phase: config.trips(phase) for phase in PHASES},
                "queued_at_last_batch": [fit.queued_at_last_batch for fit in config.fits],
                "complete": all(fit.stored_points == fit.expected_points for fit in config.fits),
                "statuses": sorted({fit.status for fit in config.fits}),
                "writer_throughput": config.drain,
            }
        )
    endpoints: dict[str, dict[str, dict[str, list[int]]]] = {}
    for config in configs:
        for phase in PHASES:
            paths = sorted({path for fit in config.fits for path in fit.requests[phase]})
            endpoints.setdefault(config.name, {})[phase] = {
                f"{methods.get(path, '?')} {path}": [fit.requests[phase][path] for fit in config.fits] for path in paths
            }
    waited = {phase: (slow.median(phase) - fast.median(phase)) / slow.latency for phase in ("setup", "end")}
    worst_trips = max(s + e for s, e in zip(slow.trips("setup"), slow.trips("end"), strict=True))
    ratio = rows[1]["loop_ratio"]
    return {
        "steps": args.steps,
        "rounds": args.rounds,
        "latency_s": args.latency,
        "dirty_tree": args.dirty,
        "rows": rows,
        "endpoints": endpoints,
        "waited_round_trips": waited,
        "targets": {
            "loop_ratio": ratio,
            "loop_ratio_pass": ratio <= TARGET_LOOP_RATIO,
            "round_trips_setup_plus_end_max": worst_trips,
            "round_trips_pass": worst_trips <= TARGET_ROUND_TRIPS,
        },
    }


def render(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["summary"]
    lines = [
        f"## Latency: a server {s['latency_s'] * 1000:.0f} ms away\n",
        f"- CPU: {m['cpu']} — {m['cores']} cores ({m['usable_cores']} usable); load average at start "
        f"{', '.join(str(x) for x in m['loadavg_at_start'])}",
        f"- Python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, mlflow {m['mlflow']}; "
        f"lightning-mlflow-ext at {results['package']}",
        f"- {s['steps']:,} steps x batch {BATCH_SIZE}, {N_METRICS} metrics/step, {s['rounds']} interleaved rounds "
        f"per configuration after one warm-up fit each; training script in a {'dirty' if s['dirty_tree'] else 'clean'} "
        f"git tree; total wall time {results['total_s']:.0f} s\n",
        "| configuration | loop (s), median | each round (s) | loop / fast | setup (s) | end of fit (s) | "
        "round trips setup / loop / end | points queued at last batch | points stored | run status |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in s["rows"]:
        interval = r["loop_ratio_interval_90"]
        spread = f" (90% {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        trips = " / ".join(_per_fit(r["round_trips"][phase]) for phase in PHASES)
        queued = [q for q in r["queued_at_last_batch"] if q is not None]
        lines.append(
            f"| {r['config']} | {r['loop_s']:.2f} | {' '.join(f'{x:.2f}' for x in r['loop_each_s'])} | "
            f"{r['loop_ratio']:.3f}x{spread} | {r['setup_s']:.2f} | {r['end_s']:.2f} | {trips} | "
            f"{_per_fit(queued) if queued else '—'} | {'all' if r['complete'] else 'MISSING'} | "
            f"{', '.join(r['statuses'])} |"
        )
    t, w = s["targets"], s["waited_round_trips"]
    slow = s["rows"][1]
    lines += [
        "",
        f"At {s['latency_s'] * 1000:.0f} ms, setup takes {slow['setup_s'] - s['rows'][0]['setup_s']:.2f} s more than "
        f"against the fast server and the end of fit {slow['end_s'] - s['rows'][0]['end_s']:.2f} s more: the "
        f"training thread waited about {w['setup']:.1f} and {w['end']:.1f} round trips (medians).",
        "",
        "| target | value | limit | result |",
        "|---|---:|---:|---|",
        f"| loop behind {s['latency_s'] * 1000:.0f} ms / loop against the fast server | {t['loop_ratio']:.3f}x | "
        f"≤ {TARGET_LOOP_RATIO:.2f}x | {'PASS' if t['loop_ratio_pass'] else 'MISS'} |",
        f"| round trips in setup + end of fit (worst fit) | {t['round_trips_setup_plus_end_max']} | "
        f"≤ {TARGET_ROUND_TRIPS} | {'PASS' if t['round_trips_pass'] else 'MISS'} |",
        "",
    ]
    drains = [(r["config"], r["writer_throughput"]) for r in s["rows"] if r["writer_throughput"]]
    if drains:
        lines.append(
            "Writer throughput (`log_metrics` far faster than the server takes points, no Trainer, then `flush()`; "
            "one run each):\n"
        )
        lines.append("| configuration | points | requests | seconds to flushed | points/s | stored |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for name, d in drains:
            complete = "all" if d["stored"] == d["points"] and not d["undelivered"] else f"{d['stored']:,}"
            lines.append(
                f"| {name} | {d['points']:,} | {d['requests']} | {d['seconds']:.2f} | {d['points_per_s']:,.0f} | "
                f"{complete} |"
            )
        lines.append("")
    for config, phases in s["endpoints"].items():
        lines.append(f"Requests per fit, {config} (median, range over the rounds when they differ):\n")
        lines.append("| phase | request | per fit |")
        lines.append("|---|---|---:|")
        for phase in PHASES:
            for endpoint, counts in phases[phase].items():
                lines.append(f"| {phase} | `{endpoint}` | {_per_fit(counts)} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="fits of each configuration, interleaved (default 5)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (batches of 8) of each fit (default 1000)")
    p.add_argument("--latency", type=float, default=DEFAULT_LATENCY_S, help="seconds added per request (0.3)")
    p.add_argument(
        "--drain-points",
        type=int,
        default=20_000,
        help="points for the writer-throughput measurement of each configuration (default 20000; 0 skips it)",
    )
    p.add_argument("--dirty", action="store_true", help="the training script's git tree has uncommitted changes")
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.latency <= 0 or args.drain_points < 0:
        p.error("--rounds and --steps must be >= 1, --latency > 0, --drain-points >= 0")
    return args


def package_version() -> str:
    """The checkout's commit, and whether src/ differs from it (people edit this checkout while it runs)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in src/" if changed else head


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in MLFLOW_ENV_VARS:
        os.environ.pop(name, None)
    from fault_servers import FaultProxy
    from mlflow_server import MlflowServer, _free_port

    quiet_libraries()
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "package": package_version()}
    crashed = False
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        old_cwd = os.getcwd()
        os.chdir(work)  # anything a library writes to the working directory lands in the temp dir
        (work / "server").mkdir()
        server = MlflowServer(work / "server", _free_port())
        proxy = None
        try:
            with contextlib.redirect_stdout(sys.stderr), script_in_repo(work, args.dirty):
                progress(f"starting mlflow server in {server.root}")
                server.start()
                proxy = FaultProxy(server.uri, spare_health=False)  # a distant server is distant for /health too
                configs = run_rounds(proxy, server, args, work)
                results["summary"] = summarize(configs, _methods(proxy.log), args)
                results["proxy_errors"] = [repr(e) for e in proxy.errors]
        except Exception:
            crashed = True
            traceback.print_exc()
            print(server.log_tail(), file=sys.stderr)
        finally:
            if proxy is not None:
                proxy.close()
            server.stop()
            os.chdir(old_cwd)
    results["total_s"] = time.perf_counter() - started
    if "summary" in results:
        print(render(results))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, default=str))
        progress(f"wrote {args.json_path}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
