"""Checkpoint uploads: does training wait while a 100 MB checkpoint goes to the server every epoch?

Run ``python benchmarks/bench_checkpoints.py`` (``--epochs N``, ``--mb M``). It starts its own local
``mlflow server`` with ``--serve-artifacts`` and prints a Markdown table: the wall time of each epoch with
``log_model="all"`` against the same training with ``log_model=False``. A measurement, not a test.
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
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--mb", type=int, default=100, help="checkpoint size in MB (float32 weights)")
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

    def fit(log_model: bool | str, server_uri: str, root: Path, pin: list[int] | None = None) -> list[float]:
        data = DataLoader(TensorDataset(torch.randn(64, side)), batch_size=8)
        clock = EpochClock()
        cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
        extra: list[Callback] = []
        if pin is not None:
            torch.set_num_threads(1)
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
            torch.set_num_threads(threads)
            for tid in (int(t) for t in os.listdir("/proc/self/task")):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, cores)
        end = time.perf_counter()
        if log_model:
            files = MlflowClient(server_uri).list_artifacts(logger.run_id, "checkpoints/latest")
            uploaded = [f for f in files if f.path.endswith(".ckpt")]
            assert len(uploaded) == args.epochs, f"{len(uploaded)} checkpoints uploaded, expected {args.epochs}"
        starts = [*clock.starts, end]
        return [b - a for a, b in itertools.pairwise(starts)]

    with tempfile.TemporaryDirectory() as work:
        server = MlflowServer(Path(work) / "server", _free_port())
        server.start()
        try:
            fit(False, server.uri, Path(work) / "warmup")
            plain = fit(False, server.uri, Path(work) / "plain")
            uploads = fit("all", server.uri, Path(work) / "uploads")
            pids = server.process_group()
            pinned_plain = fit(False, server.uri, Path(work) / "pinned-plain", pin=pids)
            pinned_uploads = fit("all", server.uri, Path(work) / "pinned-uploads", pin=pids)
        finally:
            server.stop()

    # The last epoch of the upload run also waits for its upload in finalize: report it apart.
    def steady(xs: list[float]) -> float:
        return statistics.median(xs[1:-1]) if len(xs) > 2 else statistics.median(xs)

    print(f"## Checkpoint uploads: {args.mb} MB checkpoint every epoch, {args.epochs} epochs, local server\n")
    print("| fit | CPU of this process per epoch (s) | CPU of the mlflow server per epoch (s) |")
    print("|---|---:|---:|")
    for name, (own, srv) in cpu.items():
        if name != "warmup":
            print(f"| {name} | {own / args.epochs:.2f} | {srv / args.epochs:.2f} |")
    print()
    print("| configuration | median epoch (s) | epochs (s) |")
    print("|---|---:|---|")
    rows = [
        ("log_model=False", plain),
        ('log_model="all"', uploads),
        ("log_model=False, training on core 0", pinned_plain),
        ('log_model="all", training on core 0, uploads and server on core 1', pinned_uploads),
    ]
    for name, epochs in rows:
        print(f"| {name} | {steady(epochs):.2f} | {', '.join(f'{x:.2f}' for x in epochs)} |")
    print()
    for where, ratio in (
        ("server, uploads and training sharing the 2 cores", steady(uploads) / steady(plain)),
        ("training on its own core", steady(pinned_uploads) / steady(pinned_plain)),
    ):
        print(
            f"- epoch wall time with uploads, {where}: {ratio:.2f}x (target <= 1.05x): "
            f"{'PASS' if ratio <= 1.05 else 'MISS'}"
        )
    print("\nThe last epoch includes waiting for the final upload at the end of fit; the median leaves it out.")


if __name__ == "__main__":
    run(parse_args())
