"""Metric-logging benchmark of lightning_mlflow_ext against a real local ``mlflow server``.

Run from the repository root::

    python benchmarks/bench_metrics.py            # full run (~4 minutes on 2 cores)
    python benchmarks/bench_metrics.py --quick    # smoke run (~100 steps, 100k points), under a minute

Sections (``--only NAME[,NAME]``):

``fit``    ``Trainer.fit`` wall time of a tiny model logging 10 metrics per step, for logger=False, this
           package's ``MLflowLogger``, Lightning's ``MLFlowLogger`` (default and ``synchronous=False``) and
           ``mlflow.pytorch.autolog``; plus the metric points each run holds afterwards.
``drain``  points/s of raw ``MlflowClient.log_batch`` (1000 metrics per request) vs. this package's writer.
``call``   cost of one ``logger.log_metrics`` call (10 floats) on the calling thread, in microseconds.
``rss``    peak RSS growth of a fresh process logging 1,000,000 points to the server, and the drain time.

The numbers are measurements, not tests: a missed target prints MISS and the script still exits 0. It exits
non-zero only when a section crashes. ``--json PATH`` also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # for mlflow_server (the test-suite's server fixture)

N_METRICS = 10
KEYS = [f"m{i}" for i in range(N_METRICS)]
SECTIONS = ("fit", "drain", "call", "rss")
MLFLOW_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")

# Targets (from the issue / design): writer throughput vs raw log_batch, per-call cost, memory under load.
TARGET_FIT_RATIO = 1.05
TARGET_DRAIN_RATIO = 0.80
TARGET_CALL_US = 20.0
TARGET_RSS_MB = 100.0

FLUSH_TIMEOUT_S = 900.0  # upper bound for any flush(); what is still undelivered then is reported, not waited for


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pass_miss(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# --------------------------------------------------------------------------- sizes


def _ratio_interval(ours: list[float], base: list[float], draws: int = 4000) -> tuple[float, float] | None:
    """A 90% bootstrap interval of median(ours) / median(base), resampling whole rounds (each round ran the
    pair back to back, so a slow spell of the machine stays paired). None with fewer than 3 rounds."""
    if len(ours) != len(base) or len(ours) < 3:
        return None
    rng = random.Random(0)
    n = len(ours)
    ratios = []
    for _ in range(draws):
        picked = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(ours[i] for i in picked) / statistics.median(base[i] for i in picked))
    ratios.sort()
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws) - 1]


@dataclass
class Sizes:
    steps: int  # fit: optimizer steps (1 epoch of `steps` batches of 8)
    drain_points: int  # drain: points sent by each of raw log_batch and the writer
    call_calls: int  # call: log_metrics calls timed one by one
    call_loop_calls: int  # call: log_metrics calls in one timed loop (mean)
    rss_points: int  # rss: points logged by the subprocess
    rounds: int = 9  # fit: rounds of (logger=False, MLflowLogger), interleaved; medians reported

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        if args.quick:
            sizes = cls(steps=100, drain_points=10_000, call_calls=2_000, call_loop_calls=1_000, rss_points=100_000)
            sizes.rounds = 1
        else:
            sizes = cls(steps=1000, drain_points=50_000, call_calls=20_000, call_loop_calls=5_000, rss_points=1_000_000)
        if args.steps is not None:
            sizes.steps = args.steps
        if args.rounds is not None:
            sizes.rounds = args.rounds
        return sizes


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    import lightning
    import mlflow
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "mem_gb": mem_gb,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "mlflow": mlflow.__version__,
    }


# --------------------------------------------------------------------------- helpers


def experiment_name(section: str) -> str:
    return f"bench-{section}-{uuid.uuid4().hex[:10]}"


class _DropNoBridgeWarning(logging.Filter):
    """The package warns once per logger when used without a Trainer (sections drain/call/rss do that)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "got no Trainer state" not in record.getMessage()


def quiet_libraries() -> None:
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: import first, then quieten)
    import mlflow.pytorch  # noqa: F401  (imports pytorch_lightning, which sets up its own loggers)

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("lightning_mlflow_ext.trainer.logger").addFilter(_DropNoBridgeWarning())


def db_point_counts(db_path: Path, run_id: str) -> dict[str, int]:
    """Exact number of points per key of a run, read (read-only) from the server's SQLite backend store."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run_id,)).fetchall()
    finally:
        con.close()
    return {str(k): int(n) for k, n in rows}


def history_counts(client: Any, run_id: str, keys: list[str] | None = None) -> dict[str, int]:
    """Points per key through the tracking API (``get_metric_history``); every key of the run by default."""
    if keys is None:
        keys = sorted(client.get_run(run_id).data.metrics)
    return {key: len(client.get_metric_history(run_id, key)) for key in keys}


def new_ext_logger(server_uri: str, section: str, save_root: Path) -> Any:
    from lightning_mlflow_ext import MLflowLogger

    save_dir = save_root / f"{section}-{uuid.uuid4().hex[:6]}"
    save_dir.mkdir(parents=True)
    return MLflowLogger(experiment_name=experiment_name(section), tracking_uri=server_uri, save_dir=str(save_dir))


def metrics_dict(step: int) -> dict[str, float]:
    return {key: float(step * 0.001 + i) for i, key in enumerate(KEYS)}


# --------------------------------------------------------------------------- section: fit


def _tiny_fit_parts(steps: int) -> tuple[Any, Any]:
    import lightning
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class TinyRegressor(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(32, 1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            detached = loss.detach()
            for i in range(N_METRICS):
                self.log(f"m{i}", detached + i, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 8, 32, generator=g)
    y = x @ torch.randn(32, 1, generator=g) + 0.1 * torch.randn(steps * 8, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False, num_workers=0)
    return TinyRegressor(), loader


def quiet_trainer(logger: Any, steps: int, root: Path, callbacks: list[Any] | None = None) -> Any:
    """One epoch of ``steps`` CPU steps, logging every step, with nothing else on (no checkpoints, no bars)."""
    import lightning

    return lightning.Trainer(
        logger=logger,
        callbacks=callbacks or [],
        max_epochs=1,
        max_steps=steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root),
    )


def _timed_fit(steps: int, logger: Any, root: Path) -> float:

    model, loader = _tiny_fit_parts(steps)
    trainer = quiet_trainer(logger, steps, root)
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    elapsed = time.perf_counter() - t0
    if trainer.global_step != steps:
        raise RuntimeError(f"fit ran {trainer.global_step} optimizer steps, expected {steps}")
    return elapsed


@dataclass
class FitRow:
    config: str
    samples: list[float] = field(default_factory=list)  # fit seconds, one per round
    cpu_samples: list[float] = field(default_factory=list)  # server CPU seconds, one per round
    drain_samples: list[float] = field(default_factory=list)
    stored_bench_keys: int | None = None
    stored_all_keys: int | None = None
    keys: int | None = None
    status: str | None = None
    error: str | None = None
    notes: str = ""
    baseline: str = "logger=False"  # the row this one's ratio is taken against

    @property
    def seconds(self) -> float | None:
        return _median(self.samples)

    @property
    def server_cpu(self) -> float | None:
        return _median(self.cpu_samples)

    @property
    def drain_after_fit(self) -> float | None:
        return _median(self.drain_samples)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@contextlib.contextmanager
def training_on_core_zero(server: Any) -> Iterator[None]:
    """Training (one torch thread) on core 0, the server on core 1: the server's ingest CPU no longer competes
    with training, as with a tracking server on another machine. Restored afterwards."""
    import torch

    cores = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    for pid in server.handle.process_group():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
        for pid in server.handle.process_group():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cores)


def section_fit(server: Any, sizes: Sizes, work: Path) -> dict[str, Any]:
    import lightning.pytorch.loggers as pl_loggers
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    steps = sizes.steps
    expected = N_METRICS * steps
    rows: list[FitRow] = []

    progress(f"fit: warm-up fit (logger=False, {steps} steps)")
    warmup_s = _timed_fit(steps, False, work / "fit-warmup")

    def readback(row: FitRow, run_id: str) -> None:
        counts = history_counts(client, run_id)
        stored = sum(counts.get(k, 0) for k in KEYS)
        # Over several rounds, the row keeps its worst round: "every point stored" must hold for each.
        if row.stored_bench_keys is None or stored < row.stored_bench_keys:
            row.stored_bench_keys = stored
            row.stored_all_keys = sum(counts.values())
            row.keys = len(counts)
        status = client.get_run(run_id).info.status
        if row.status is None or status != "FINISHED":
            row.status = status

    by_name: dict[str, FitRow] = {}

    def run_config(name: str, body: Callable[[FitRow], None], baseline: str = "logger=False") -> None:
        progress(f"fit: {name}")
        row = by_name.get(name)
        if row is None:
            row = by_name[name] = FitRow(name, baseline=baseline)
            rows.append(row)
        cpu_before = server.handle.cpu_seconds()
        try:
            body(row)
            row.cpu_samples.append(server.handle.cpu_seconds() - cpu_before)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        progress(f"fit: {name}: {round(row.samples[-1], 2) if row.samples else None} s")

    def baseline(row: FitRow) -> None:
        row.samples.append(_timed_fit(steps, False, work / "fit-none"))

    def ext(row: FitRow) -> None:
        from lightning_mlflow_ext import MLflowLogger

        save_dir = work / f"fit-ext-{uuid.uuid4().hex[:8]}"
        save_dir.mkdir()
        logger = MLflowLogger(experiment_name=experiment_name("fit-ext"), tracking_uri=server.uri, save_dir=save_dir)
        row.samples.append(_timed_fit(steps, logger, save_dir))
        t0 = time.perf_counter()
        undelivered = logger.flush()
        row.drain_samples.append(time.perf_counter() - t0)
        if undelivered:
            row.notes = f"flush() reported {undelivered} undelivered"
        readback(row, logger.run_id)

    def lightning_logger(synchronous: bool | None) -> Callable[[FitRow], None]:
        def body(row: FitRow) -> None:
            kwargs: dict[str, Any] = {} if synchronous is None else {"synchronous": synchronous}
            logger = pl_loggers.MLFlowLogger(
                experiment_name=experiment_name("fit-lightning"),
                tracking_uri=server.uri,
                save_dir=str(work / "fit-lightning-mlruns"),
                **kwargs,
            )
            row.samples.append(_timed_fit(steps, logger, work / "fit-lightning"))
            t0 = time.perf_counter()
            mlflow.flush_async_logging()  # set_terminated() in finalize already drained; this should be ~0
            row.drain_samples.append(time.perf_counter() - t0)
            readback(row, logger.run_id)

        return body

    def autolog(row: FitRow) -> None:
        # autolog only reads MLflow's global state: setting it here is the benchmark's doing, not the package's.
        mlflow.set_tracking_uri(server.uri)
        mlflow.set_experiment(experiment_name("fit-autolog"))
        mlflow.pytorch.autolog(log_every_n_step=1, log_models=False, checkpoint=False, silent=True)
        try:
            row.samples.append(_timed_fit(steps, False, work / "fit-autolog"))
        finally:
            mlflow.pytorch.autolog(disable=True)
        last = mlflow.last_active_run()
        if last is None:
            raise RuntimeError("autolog created no run")
        readback(row, last.info.run_id)
        row.notes = "log_every_n_step=1, log_models=False, checkpoint=False"

    # The machine's noise between two 4-second fits is of the order of the 5% under test: the pair runs in
    # interleaved rounds and the medians are compared.
    for _ in range(sizes.rounds):
        run_config("logger=False", baseline)
        run_config("lightning_mlflow_ext.MLflowLogger", ext)
    run_config("Lightning MLFlowLogger (default)", lightning_logger(None))
    run_config("Lightning MLFlowLogger(synchronous=False)", lightning_logger(False))
    run_config("mlflow.pytorch.autolog (logger=False)", autolog)
    with contextlib.suppress(Exception):
        mlflow.set_tracking_uri(None)  # undo what Lightning's logger and the autolog setup changed
    if len(os.sched_getaffinity(0)) >= 2:
        pinned_base = "logger=False, training on core 0"
        with training_on_core_zero(server):
            for _ in range(sizes.rounds):
                run_config(pinned_base, baseline, baseline=pinned_base)
                run_config("lightning_mlflow_ext.MLflowLogger, training on core 0, server on core 1", ext, pinned_base)

    seconds_of = {row.config: row.seconds for row in rows}
    samples_of = {row.config: row.samples for row in rows}
    out_rows = []
    for row in rows:
        base = seconds_of.get(row.baseline)
        ratio = row.seconds / base if (row.seconds is not None and base) else None
        paired = samples_of.get(row.baseline, []) if row.baseline != row.config else []
        interval = _ratio_interval(row.samples, paired)
        complete = None if row.config.startswith("logger=False") or row.error else row.stored_bench_keys == expected
        out_rows.append(
            {
                "config": row.config,
                "seconds": row.seconds,
                "rounds": len(row.samples),
                "all_seconds": row.samples,
                "server_cpu_s": row.server_cpu,
                "ratio_to_no_logger": ratio,
                "ratio_interval_90": interval,
                "drain_after_fit_s": row.drain_after_fit,
                "stored_points_bench_keys": row.stored_bench_keys,
                "stored_points_all_keys": row.stored_all_keys,
                "metric_keys": row.keys,
                "run_status": row.status,
                "complete": complete,
                "error": row.error,
                "notes": row.notes,
            }
        )
    return {
        "steps": steps,
        "batch_size": 8,
        "metrics_per_step": N_METRICS,
        "rounds": sizes.rounds,
        "expected_points_bench_keys": expected,
        "warmup_fit_s": warmup_s,
        "rows": out_rows,
        "failed": any(r.error for r in rows),
    }


# --------------------------------------------------------------------------- section: drain


def section_drain(server: Any, sizes: Sizes, work: Path) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(server.uri)
    n_points = sizes.drain_points - sizes.drain_points % 1000
    n_steps = n_points // N_METRICS

    # (a) raw: the request rate the server allows, 1000 metrics per log_batch, on this thread.
    exp_id = client.create_experiment(experiment_name("drain-raw"))
    raw_run = client.create_run(exp_id).info.run_id
    ts = int(time.time() * 1000)
    batches = [
        [Metric(key, float(s * 0.001 + i), ts, s) for s in range(b, b + 100) for i, key in enumerate(KEYS)]
        for b in range(0, n_steps, 100)
    ]
    progress(f"drain: raw log_batch, {n_points:,} points in {len(batches)} requests")
    t0 = time.perf_counter()
    for batch in batches:
        client.log_batch(raw_run, metrics=batch)
    raw_s = time.perf_counter() - t0
    client.set_terminated(raw_run)
    raw_stored = sum(db_point_counts(server.db_path, raw_run).values())

    # (b) this package's writer: log_metrics as fast as possible, then flush().
    progress(f"drain: MLflowLogger.log_metrics x {n_steps:,} + flush()")
    logger = new_ext_logger(server.uri, "drain-writer", work)
    run_id = logger.run_id  # create the run outside the timed region
    gc.collect()
    t0 = time.perf_counter()
    for s in range(n_steps):
        logger.log_metrics(metrics_dict(s), step=s)
    loop_s = time.perf_counter() - t0
    undelivered = logger.flush(timeout=FLUSH_TIMEOUT_S)
    writer_s = time.perf_counter() - t0
    logger.finalize("success")
    writer_stored = sum(history_counts(client, run_id, KEYS).values())

    raw_rate = n_points / raw_s
    writer_rate = n_points / writer_s
    ratio = writer_rate / raw_rate
    return {
        "points": n_points,
        "raw_seconds": raw_s,
        "raw_points_per_s": raw_rate,
        "raw_stored": raw_stored,
        "writer_loop_seconds": loop_s,
        "writer_seconds_to_flushed": writer_s,
        "writer_points_per_s": writer_rate,
        "writer_undelivered": undelivered,
        "writer_stored": writer_stored,
        "ratio": ratio,
        "target_ratio": TARGET_DRAIN_RATIO,
        "pass": ratio >= TARGET_DRAIN_RATIO and writer_stored == n_points,
    }


# --------------------------------------------------------------------------- section: call


def section_call(server: Any, sizes: Sizes, work: Path) -> dict[str, Any]:
    logger = new_ext_logger(server.uri, "call", work)
    run_id = logger.run_id
    n = sizes.call_calls
    samples = [0] * n
    clock = time.perf_counter_ns
    gc.collect()  # start from a clean heap; a full collection inside the loop still shows up in max (not p99)
    progress(f"call: {n:,} log_metrics calls timed one by one (writer sending in the background)")
    for s in range(n):
        metrics = metrics_dict(s)
        t0 = clock()
        logger.log_metrics(metrics, step=s)
        samples[s] = clock() - t0

    m = sizes.call_loop_calls
    progress(f"call: {m:,} calls in one timed loop")
    prepared = [metrics_dict(s) for s in range(n, n + m)]
    t0 = clock()
    for s, metrics in enumerate(prepared, start=n):
        logger.log_metrics(metrics, step=s)
    loop_ns = clock() - t0

    total = (n + m) * N_METRICS
    progress(f"call: flush() of {total:,} points")
    t0 = time.perf_counter()
    undelivered = logger.flush(timeout=FLUSH_TIMEOUT_S)
    drain_s = time.perf_counter() - t0
    logger.finalize("success")
    stored = sum(db_point_counts(server.db_path, run_id).get(k, 0) for k in KEYS)

    # Early vs late calls: the writer's backlog grows during the loop (the loop outruns the server), so the
    # cost per call can change as it goes (e.g. once the in-memory queue is full and writes spill to disk).
    part = max(1, n // 4)
    early = sorted(x / 1000 for x in samples[:part])
    late = sorted(x / 1000 for x in samples[-part:])
    samples.sort()
    us = [x / 1000 for x in samples]
    median = statistics.median(us)
    p99 = us[min(len(us) - 1, int(0.99 * len(us)))]
    return {
        "calls_timed": n,
        "metrics_per_call": N_METRICS,
        "median_us": median,
        "p99_us": p99,
        "max_us": us[-1],
        "mean_us_per_call_timing": statistics.fmean(us),
        "quarter_calls": part,
        "first_quarter_median_us": statistics.median(early),
        "first_quarter_p99_us": early[min(len(early) - 1, int(0.99 * len(early)))],
        "last_quarter_median_us": statistics.median(late),
        "last_quarter_p99_us": late[min(len(late) - 1, int(0.99 * len(late)))],
        "loop_calls": m,
        "mean_us_loop": loop_ns / m / 1000,
        "flush_after_s": drain_s,
        "undelivered": undelivered,
        "stored": stored,
        "expected_stored": total,
        "target_us": TARGET_CALL_US,
        "pass": median <= TARGET_CALL_US and p99 <= TARGET_CALL_US,
    }


# --------------------------------------------------------------------------- section: rss


def _proc_status_kib() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _rss_sampler(interval: float = 0.05) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _proc_status_kib().get("VmRSS", 0))
            stop.wait(interval)

    thread = threading.Thread(target=run, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _proc_status_kib().get("VmRSS", 0))


def rss_child(server_uri: str, save_dir: str, n_points: int) -> dict[str, Any]:
    """Runs in a fresh process: import, create the logger and its run, then log ``n_points`` and flush."""
    t_import = time.perf_counter()
    from lightning_mlflow_ext import MLflowLogger

    import_s = time.perf_counter() - t_import
    quiet_libraries()
    logger = MLflowLogger(experiment_name=experiment_name("rss"), tracking_uri=server_uri, save_dir=save_dir)
    run_id = logger.run_id
    gc.collect()
    base = _proc_status_kib()
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm_reset = _reset_peak_rss()

    n_calls = n_points // N_METRICS
    with _rss_sampler() as sampled:
        t0 = time.perf_counter()
        for s in range(n_calls):
            logger.log_metrics({key: float(s * 0.001 + i) for i, key in enumerate(KEYS)}, step=s)
        t_loop = time.perf_counter()
        after_loop = _proc_status_kib()
        undelivered = logger.flush(timeout=FLUSH_TIMEOUT_S)
        t_flushed = time.perf_counter()
    end = _proc_status_kib()
    end_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    logger.finalize("success")

    peak_kib = max(sampled[0], end.get("VmHWM", 0) if hwm_reset else 0)
    return {
        "run_id": run_id,
        "points": n_calls * N_METRICS,
        "import_s": import_s,
        "baseline_rss_mb": base.get("VmRSS", 0) / 1024,
        "baseline_hwm_mb": base.get("VmHWM", 0) / 1024,
        "hwm_reset": hwm_reset,
        "rss_after_loop_mb": after_loop.get("VmRSS", 0) / 1024,
        "rss_after_flush_mb": end.get("VmRSS", 0) / 1024,
        "peak_rss_mb": peak_kib / 1024,
        "peak_growth_mb": (peak_kib - base.get("VmRSS", 0)) / 1024,
        "ru_maxrss_growth_mb": (end_maxrss - base_maxrss) / 1024,
        "loop_s": t_loop - t0,
        "drain_after_loop_s": t_flushed - t_loop,
        "total_s": t_flushed - t0,
        "undelivered": undelivered,
    }


def section_rss(server: Any, sizes: Sizes, work: Path) -> dict[str, Any]:
    from mlflow import MlflowClient

    save_dir = work / "rss"
    save_dir.mkdir()
    out_path = work / "rss-result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_rss-child",
        json.dumps({"uri": server.uri, "save_dir": str(save_dir), "points": sizes.rss_points, "out": str(out_path)}),
    ]
    progress(f"rss: subprocess logs {sizes.rss_points:,} points and flushes")
    # The child's stdout goes to our stderr: stdout carries only the final report.
    proc = subprocess.run(cmd, cwd=work, timeout=FLUSH_TIMEOUT_S + 600, check=False, stdout=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"rss subprocess exited with code {proc.returncode}")
    result: dict[str, Any] = json.loads(out_path.read_text())

    run_id = result["run_id"]
    progress("rss: reading back")
    db_counts = db_point_counts(server.db_path, run_id)
    result["stored_all_keys_db"] = sum(db_counts.get(k, 0) for k in KEYS)
    client = MlflowClient(server.uri)
    t0 = time.perf_counter()
    sample_keys = [KEYS[0], KEYS[-1]]
    result["stored_history"] = history_counts(client, run_id, sample_keys)
    result["history_read_s"] = time.perf_counter() - t0
    result["expected_per_key"] = result["points"] // N_METRICS
    result["complete"] = result["stored_all_keys_db"] == result["points"] and all(
        n == result["expected_per_key"] for n in result["stored_history"].values()
    )
    result["target_mb"] = TARGET_RSS_MB
    result["pass"] = result["peak_growth_mb"] <= TARGET_RSS_MB
    return result


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    m = results["machine"]
    lines.append("## Machine\n")
    lines.append(f"- CPU: {m['cpu']} — {m['cores']} cores ({m['usable_cores']} usable), {m['mem_gb']} GB RAM")
    lines.append(f"- load average at start: {', '.join(str(x) for x in m['loadavg_at_start'])}")
    lines.append(
        f"- Python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, mlflow {m['mlflow']}; {m['os']}"
    )
    lines.append(f"- server: `mlflow server` (SQLite backend, --serve-artifacts, 1 worker) at {results['server_uri']}")
    lines.append(f"- mode: {'quick' if results['quick'] else 'full'}; total wall time {results['total_s']:.0f} s\n")

    s = results["sections"]
    fit = s.get("fit")
    if fit and "rows" in fit:
        lines.append(
            f"## 1. `Trainer.fit` wall time — Linear(32, 1), {fit['steps']:,} steps x batch {fit['batch_size']}, "
            f"{fit['metrics_per_step']} metrics/step (`self.log(on_step=True)`), log_every_n_steps=1\n"
        )
        lines.append(
            "| configuration | fit (s), median | each round (s) | x its logger=False row | server CPU (s) | "
            "drain after fit (s) | "
            "points stored, m0..m9 "
            f"(target {fit['expected_points_bench_keys']:,}) | points stored, all keys | keys | run status | result |"
        )
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
        for r in fit["rows"]:
            result = f"ERROR: {r['error']}" if r["error"] else pass_miss(r["complete"])
            lines.append(
                f"| {r['config']} | {fmt(r['seconds'])} | {' '.join(f'{x:.2f}' for x in r['all_seconds'])} | "
                f"{fmt(r['ratio_to_no_logger'], '.3f')}x | "
                f"{fmt(r.get('server_cpu_s'), '.1f')} | "
                f"{fmt(r['drain_after_fit_s'], '.3f')} | {fmt_int(r['stored_points_bench_keys'])} | "
                f"{fmt_int(r['stored_points_all_keys'])} | {fmt_int(r['metric_keys'])} | {r['run_status'] or '—'} | "
                f"{result} |"
            )
        lines.append("")
        lines.append(
            f"logger=False and this package's logger ran in {fit['rounds']} interleaved rounds (on shared cores, then "
            f"pinned), the other loggers once each, after one warm-up fit with logger=False "
            f"({fit['warmup_fit_s']:.2f} s); a ratio compares medians, and 'points stored' is the worst round. "
            "Times are `trainer.fit` only; every logger's `finalize` runs inside it. "
            "'drain after fit' is `logger.flush()` (this package) or `mlflow.flush_async_logging()` (Lightning) "
            "right after the fit. autolog: `mlflow.pytorch.autolog(log_every_n_step=1, log_models=False, "
            "checkpoint=False)`, with the global tracking URI and experiment set for it. 'all keys' includes "
            "the `epoch` metric the loggers add and anything autolog logs per epoch. 'server CPU' is the CPU time "
            "the local `mlflow server` spent during that configuration (read back included): on a 2-core machine "
            "it is taken from the training, whichever logger sends the points. The last two rows pin training (one "
            "torch thread) to core 0 and the server to core 1, as a tracking server on another machine would be; "
            "their ratio is to the pinned logger=False row.\n"
        )
    elif fit:
        lines.append(f"## 1. `Trainer.fit` — ERROR: {fit['error']}\n")

    lines.append("## Targets\n")
    lines.append("| # | measurement | value | target | result |")
    lines.append("|---|---|---:|---:|---|")
    for r in fit["rows"] if fit and "rows" in fit else []:
        if r["config"].startswith("lightning_mlflow_ext") and r["ratio_to_no_logger"] is not None:
            where = "server on its own core" if "core 1" in r["config"] else "server sharing the 2 cores"
            ok = r["ratio_to_no_logger"] <= TARGET_FIT_RATIO and bool(r["complete"])
            interval = r.get("ratio_interval_90")
            spread = f" (90% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
            lines.append(
                f"| 1 | fit with MLflowLogger / without, {where}, every point stored | "
                f"{r['ratio_to_no_logger']:.3f}x{spread} | ≤ {TARGET_FIT_RATIO:.2f}x | {pass_miss(ok)} |"
            )
    d = s.get("drain")
    if d and "error" not in d:
        lines.append(
            f"| 2a | raw `MlflowClient.log_batch`, 1000 metrics/request, {d['points']:,} points | "
            f"{d['raw_points_per_s']:,.0f} points/s | — | — |"
        )
        lines.append(
            f"| 2b | writer: `log_metrics` x{d['points'] // N_METRICS:,} then `flush()` "
            f"(loop {d['writer_loop_seconds']:.2f} s, flushed at {d['writer_seconds_to_flushed']:.2f} s; "
            f"stored {d['writer_stored']:,}, undelivered {d['writer_undelivered']}) | "
            f"{d['writer_points_per_s']:,.0f} points/s | — | — |"
        )
        lines.append(
            f"| 2 | writer / raw | {d['ratio']:.0%} | ≥ {d['target_ratio']:.0%} (all stored) | {pass_miss(d['pass'])} |"
        )
    elif d:
        lines.append(f"| 2 | drain throughput | ERROR: {d['error']} | ≥ 80% | ERROR |")
    c = s.get("call")
    if c and "error" not in c:
        lines.append(
            f"| 3 | `log_metrics` (10 floats) on the calling thread, median of {c['calls_timed']:,} calls | "
            f"{c['median_us']:.1f} µs | ≤ {c['target_us']:.0f} µs | {pass_miss(c['median_us'] <= c['target_us'])} |"
        )
        lines.append(
            f"| 3 | p99 of the same calls (max {c['max_us']:,.0f} µs) | {c['p99_us']:.1f} µs | "
            f"≤ {c['target_us']:.0f} µs | {pass_miss(c['p99_us'] <= c['target_us'])} |"
        )
        lines.append(
            f"| 3 | median / p99 of the first {c['quarter_calls']:,} vs the last {c['quarter_calls']:,} calls | "
            f"{c['first_quarter_median_us']:.1f} / {c['first_quarter_p99_us']:.1f} vs "
            f"{c['last_quarter_median_us']:.1f} / {c['last_quarter_p99_us']:.1f} µs | — | — |"
        )
        lines.append(
            f"| 3 | mean over one timed loop of {c['loop_calls']:,} calls | {c['mean_us_loop']:.1f} µs | "
            f"≤ {c['target_us']:.0f} µs | {pass_miss(c['mean_us_loop'] <= c['target_us'])} |"
        )
        lines.append(
            f"| 3 | then `flush()` of the {c['expected_stored']:,} points (stored {c['stored']:,}, undelivered "
            f"{c['undelivered']}) | {c['flush_after_s']:.1f} s | — | "
            f"{pass_miss(c['stored'] == c['expected_stored'])} |"
        )
    elif c:
        lines.append(f"| 3 | `log_metrics` call cost | ERROR: {c['error']} | ≤ 20 µs | ERROR |")
    r = s.get("rss")
    if r and "error" not in r:
        hist = ", ".join(f"{k}: {v:,}" for k, v in r["stored_history"].items())
        lines.append(
            f"| 4 | peak RSS growth logging {r['points']:,} points in a fresh process (baseline "
            f"{r['baseline_rss_mb']:.0f} MiB after import + logger; "
            f"ru_maxrss growth {r['ru_maxrss_growth_mb']:.0f} MiB) | "
            f"{r['peak_growth_mb']:.1f} MiB | ≤ {r['target_mb']:.0f} MiB | {pass_miss(r['pass'])} |"
        )
        lines.append(
            f"| 4 | logging loop / drain after the loop / total "
            f"({r['points'] / r['total_s']:,.0f} points/s end to end) | "
            f"{r['loop_s']:.1f} / {r['drain_after_loop_s']:.1f} / {r['total_s']:.1f} s | — | — |"
        )
        lines.append(
            f"| 4 | points stored (all 10 keys, from the server's DB; `get_metric_history` {hist}, "
            f"undelivered {r['undelivered']}) | {r['stored_all_keys_db']:,} | {r['points']:,} | "
            f"{pass_miss(r['complete'])} |"
        )
    elif r:
        lines.append(f"| 4 | peak RSS growth | ERROR: {r['error']} | ≤ 100 MiB | ERROR |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps of each fit (default 1000; 100 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="fast smoke run: ~100 steps, 100k points")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="fit: interleaved rounds of logger=False and MLflowLogger, medians compared (default 9; 1 with --quick)",
    )
    p.add_argument("--only", default=None, help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    p.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON to this path")
    p.add_argument("--_rss-child", dest="rss_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        wanted = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(wanted) - set(SECTIONS))
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        args.sections = [s for s in SECTIONS if s in wanted]
    else:
        args.sections = list(SECTIONS)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


@dataclass
class Server:
    """The benchmark's view of the running server."""

    uri: str
    db_path: Path
    handle: Any = field(repr=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in MLFLOW_ENV_VARS:
        os.environ.pop(name, None)

    if args.rss_child:
        spec = json.loads(args.rss_child)
        result = rss_child(spec["uri"], spec["save_dir"], spec["points"])
        Path(spec["out"]).write_text(json.dumps(result))
        return 0

    from mlflow_server import MlflowServer, _free_port

    quiet_libraries()
    sizes = Sizes.from_args(args)
    started = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "sizes": sizes.__dict__, "sections": {}}
    results["machine"] = machine_info()
    json_path = Path(args.json_path).resolve() if args.json_path else None

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        work = Path(tmp)
        old_cwd = os.getcwd()
        os.chdir(work)  # anything a library writes to the working directory lands in the temp dir
        server_root = work / "server"
        server_root.mkdir()
        handle = MlflowServer(server_root, _free_port())
        # Libraries print to stdout (MLflow's "View run ..." links): keep stdout for the report only.
        try:
            with contextlib.redirect_stdout(sys.stderr):
                crashed = run_sections(handle, args.sections, sizes, work, results)
        except Exception:
            crashed = True
            traceback.print_exc()
            print(handle.log_tail(), file=sys.stderr)
        finally:
            handle.stop()
            os.chdir(old_cwd)

    results["total_s"] = time.perf_counter() - started
    if "server_uri" in results:
        print(render(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=str))
        progress(f"wrote {json_path}")
    return 1 if crashed else 0


def run_sections(handle: Any, sections: list[str], sizes: Sizes, work: Path, results: dict[str, Any]) -> bool:
    """Start the server, run the sections in order (a crash in one does not stop the others); True if any crashed."""
    crashed = False
    progress(f"starting mlflow server in {handle.root}")
    handle.start()
    server = Server(handle.uri, handle.root / "mlflow.db", handle)
    results["server_uri"] = server.uri
    results["server_startup_s"] = handle.startup_seconds[-1]
    _warm_up_server(server)
    functions = {"fit": section_fit, "drain": section_drain, "call": section_call, "rss": section_rss}
    for name in sections:
        t0 = time.perf_counter()
        try:
            results["sections"][name] = functions[name](server, sizes, work)
            crashed = crashed or bool(results["sections"][name].get("failed"))
        except Exception as exc:
            crashed = True
            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        results["sections"][name]["section_s"] = time.perf_counter() - t0
        progress(f"{name}: done in {time.perf_counter() - t0:.1f} s")
    return crashed


def _warm_up_server(server: Server) -> None:
    """One experiment, run and batch, so that the first measured request does not pay for cold caches."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment(experiment_name("warmup"))).info.run_id
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(KEYS[i % N_METRICS], float(i), ts, i // N_METRICS) for i in range(1000)])
    client.get_metric_history(run_id, KEYS[0])
    client.set_terminated(run_id)


if __name__ == "__main__":
    sys.exit(main())
