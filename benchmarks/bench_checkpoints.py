"""Checkpoint uploads: does training wait while a 100 MB checkpoint goes to the server every epoch?

Run ``python benchmarks/bench_checkpoints.py`` (``--epochs N``, ``--mb M``, ``--rounds R``). It starts its own
local ``mlflow server`` with ``--serve-artifacts`` and prints a Markdown table: the median steady epoch with
``log_model="all"`` against the same training with ``log_model=False``, in three settings, the pairs interleaved
over rounds. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # for mlflow_server (the test-suite's server fixture)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--mb", type=int, default=100, help="checkpoint size in MB (float32 weights)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every (no uploads, uploads) pair")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer, _free_port
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_mlflow_ext import MLflowLogger

    logging.disable(logging.WARNING)
    side = int((args.mb * 1e6 / 4) ** 0.5)  # one square Linear layer of `mb` MB

    class Big(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(side, side, bias=False)

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    class PinBackground(Callback):
        """Training (the main thread, one torch thread) on core 0; every other thread of this process (the
        logger's uploads) and the server on core 1, as on a machine where the server is elsewhere and the
        background work has a core of its own."""

        def __init__(self, server_pids: list[int]) -> None:
            self.server_pids = server_pids

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            main = threading.main_thread().native_id
            os.sched_setaffinity(0, {0})
            for tid in (int(t) for t in os.listdir("/proc/self/task")):
                if tid != main:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(tid, {1})
            for pid in self.server_pids:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, {1})

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.starts.append(time.perf_counter())

    cpu: dict[str, tuple[float, float]] = {}  # fit -> (this process's CPU s, the server's CPU s)

    def fit(
        log_model: bool | str, server_uri: str, root: Path, pin: list[int] | None = None, threads: int | None = None
    ) -> list[float]:
        data = DataLoader(TensorDataset(torch.randn(64, side)), batch_size=8)
        clock = EpochClock()
        cores, default_threads = os.sched_getaffinity(0), torch.get_num_threads()
        extra: list[Callback] = []
        if threads is not None:
            torch.set_num_threads(threads)
        if pin is not None:
            extra.append(PinBackground(pin))
        logger = MLflowLogger(experiment_name="bench-ckpt", tracking_uri=server_uri, save_dir=root, log_model=log_model)
        trainer = L.Trainer(
            max_epochs=args.epochs,
            logger=logger,
            callbacks=[*extra, clock, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1)],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        own0, server0 = time.process_time(), server.cpu_seconds()
        try:
            trainer.fit(Big(), data)
            cpu[root.name] = (time.process_time() - own0, server.cpu_seconds() - server0)
        finally:
            torch.set_num_threads(default_threads)
            for tid in [*(int(t) for t in os.listdir("/proc/self/task")), *(pin or [])]:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, cores)
        end = time.perf_counter()
        if log_model:
            files = MlflowClient(server_uri).list_artifacts(logger.run_id, "checkpoints/latest")
            uploaded = [f for f in files if f.path.endswith(".ckpt")]
            assert len(uploaded) == args.epochs, f"{len(uploaded)} checkpoints uploaded, expected {args.epochs}"
        starts = [*clock.starts, end]
        return [b - a for a, b in itertools.pairwise(starts)]

    # Three settings, each a pair (no uploads, uploads) run back to back in every round, so that a slow spell
    # of this shared machine hits both sides of a pair. `threads`: torch threads; `pin`: training on core 0.
    settings = {
        "shared": ("2 torch threads, server and uploads sharing the 2 cores", 2, False),
        "one-thread": ("1 torch thread (the host side of a GPU job), no pinning", 1, False),
        "pinned": ("1 torch thread on core 0; uploads and server on core 1", 1, True),
    }
    epochs: dict[tuple[str, bool], list[float]] = {(name, up): [] for name in settings for up in (False, True)}
    cpu_sums: dict[tuple[str, bool], list[float]] = {key: [0.0, 0.0] for key in epochs}
    with tempfile.TemporaryDirectory() as work:
        server = MlflowServer(Path(work) / "server", _free_port())
        server.start()
        try:
            fit(False, server.uri, Path(work) / "warmup")
            pids = server.process_group()
            for round_ in range(args.rounds):
                for name, (_, threads, pinned) in settings.items():
                    for uploads in (False, True):
                        root = Path(work) / f"{name}-{uploads}-{round_}"
                        log_model: bool | str = "all" if uploads else False
                        seconds = fit(log_model, server.uri, root, pin=pids if pinned else None, threads=threads)
                        epochs[name, uploads].extend(seconds[1:-1])  # steady epochs only (see below)
                        own, srv = cpu[root.name]
                        cpu_sums[name, uploads][0] += own / args.epochs / args.rounds
                        cpu_sums[name, uploads][1] += srv / args.epochs / args.rounds
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            server.stop()

    print(f"## Checkpoint uploads: {args.mb} MB checkpoint every epoch, {args.epochs} epochs x {args.rounds} rounds\n")
    print(
        "| setting | uploads | median epoch (s) | epochs pooled | CPU of this process / epoch (s) "
        "| CPU of the server / epoch (s) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (name, uploads), xs in epochs.items():
        own, srv = cpu_sums[name, uploads]
        median, pooled = statistics.median(xs), len(xs)
        print(f"| {name} | {'yes' if uploads else 'no'} | {median:.3f} | {pooled} | {own:.2f} | {srv:.2f} |")
    print()
    for name, (description, _, _) in settings.items():
        ratio = statistics.median(epochs[name, True]) / statistics.median(epochs[name, False])
        verdict = "PASS" if ratio <= 1.05 else "MISS"
        print(f"- {name} ({description}): epoch with uploads {ratio:.3f}x without (target <= 1.05x): {verdict}")
    print(
        "\nSteady epochs only: the first of each fit (nothing uploaded yet) and the last (which also waits for the "
        "final upload in finalize) are left out."
    )


if __name__ == "__main__":
    run(parse_args())
