"""Checkpoints as logged models: what making each checkpoint a logged model costs, against plain artifacts.

Run ``python benchmarks/bench_logged_models.py`` (``--epochs N``, ``--mb M``, ``--rounds R``). It starts its own
local ``mlflow server`` (``--serve-artifacts``) behind the test-suite's counting proxy (``tests/fault_servers.py``,
no faults), and fits with ``log_model="all"`` and a checkpoint every epoch, pairs interleaved over rounds:
``log_checkpoint_models=True`` (each checkpoint a logged model) and ``False`` (plain artifacts only). It prints
the median steady epoch of each, and the requests the store received per checkpoint, by endpoint. A measurement,
not a test.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # mlflow_server and fault_servers: the test-suite's server and proxy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--mb", type=int, default=20, help="checkpoint size in MB (float32 weights)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every (plain, models) pair")
    return parser.parse_args()


def endpoint(path: str) -> str:
    """A request's endpoint without the ids in its path: artifact uploads grouped by where they go."""
    path = path.split("?", 1)[0]
    if "/mlflow-artifacts/artifacts/" in path:
        return "PUT artifact (model)" if "/models/" in path else "PUT artifact (run)"
    if "/logged-models/" in path and not path.endswith("/search"):
        parts = path.rstrip("/").split("/")
        return "logged-models/<id>" + ("/" + parts[-1] if not parts[-1].startswith("m-") else "")
    return path.replace("/api/2.0/mlflow/", "")


def run(args: argparse.Namespace) -> None:
    import lightning as L
    import torch
    from fault_servers import FaultProxy
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer, _free_port
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_mlflow_ext import MLflowLogger

    logging.disable(logging.WARNING)
    side = int((args.mb * 1e6 / 4) ** 0.5)

    class Big(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(side, side, bias=False)

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss, on_epoch=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.starts.append(time.perf_counter())

    def fit(models: bool, uri: str, root: Path) -> tuple[list[float], collections.Counter[str]]:
        data = DataLoader(TensorDataset(torch.randn(64, side)), batch_size=8)
        clock = EpochClock()
        logger = MLflowLogger(
            experiment_name="bench-logged-models", tracking_uri=uri, save_dir=root, log_model="all",
            log_checkpoint_models=models, show_run_link=False,
        )  # fmt: skip
        trainer = L.Trainer(
            max_epochs=args.epochs,
            logger=logger,
            callbacks=[clock, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1)],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        before: collections.Counter[str] = collections.Counter()
        for path, n in proxy.requests_by_path.items():
            before[endpoint(path)] += n
        trainer.fit(Big(), data)
        end = time.perf_counter()
        after: collections.Counter[str] = collections.Counter()
        for path, n in proxy.requests_by_path.items():
            after[endpoint(path)] += n
        if models:
            found = MlflowClient(uri).search_logged_models(
                [logger.experiment_id], filter_string=f"source_run_id = '{logger.run_id}'"
            )
            assert len(found) == args.epochs and all(str(m.status) == "READY" for m in found), found
        starts = [*clock.starts, end]
        return [b - a for a, b in itertools.pairwise(starts)], after - before

    epochs: dict[bool, list[float]] = {False: [], True: []}
    requests: dict[bool, collections.Counter[str]] = {False: collections.Counter(), True: collections.Counter()}
    with tempfile.TemporaryDirectory() as work:
        server = MlflowServer(Path(work) / "server", _free_port())
        server.start()
        proxy = FaultProxy(server.uri)
        try:
            fit(False, proxy.uri, Path(work) / "warmup")
            for round_ in range(args.rounds):
                for models in (False, True):
                    seconds, counted = fit(models, proxy.uri, Path(work) / f"{models}-{round_}")
                    epochs[models].extend(seconds[1:-1])
                    requests[models].update(counted)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            proxy.close()
            server.stop()

    checkpoints = args.epochs * args.rounds
    print(f"## Checkpoints as logged models: {args.mb} MB checkpoint every epoch, {args.epochs} epochs x "
          f"{args.rounds} rounds\n")  # fmt: skip
    print("| checkpoints as | median steady epoch (s) | epochs pooled | requests per checkpoint |")
    print("|---|---:|---:|---:|")
    for models in (False, True):
        per = sum(requests[models].values()) / checkpoints
        label = "logged models + artifacts" if models else "plain artifacts"
        print(f"| {label} | {statistics.median(epochs[models]):.3f} | {len(epochs[models])} | {per:.1f} |")
    ratio = statistics.median(epochs[True]) / statistics.median(epochs[False])
    print(f"\nEpoch with logged models: {ratio:.3f}x plain artifacts.\n")
    print("Requests per checkpoint, by endpoint (whole fit divided by checkpoints; run setup included):\n")
    print("| endpoint | plain | logged models | extra |")
    print("|---|---:|---:|---:|")
    for name in sorted(set(requests[False]) | set(requests[True])):
        plain, models_ = requests[False][name] / checkpoints, requests[True][name] / checkpoints
        print(f"| {name} | {plain:.2f} | {models_:.2f} | {models_ - plain:+.2f} |")
    print("\nSteady epochs only: the first of each fit and the last (which waits for the final upload) left out.")


if __name__ == "__main__":
    run(parse_args())
