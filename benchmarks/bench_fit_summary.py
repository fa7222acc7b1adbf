"""What the fit summary costs a training batch: the bridge's ``on_train_batch_end`` (count the batch's samples),
timed inside a real fit with an ``MLflowLogger`` on an embedded SQLite store.

    python benchmarks/bench_fit_summary.py [--calls N]

At the first training batch a probe callback calls the bridge's hook ``N`` times with that batch and the live
Trainer (the logger bound, rank 0, recording), and the same loop with an empty hook; it reports nanoseconds per
call (median of 7 repeats), for a ``(x, y)`` tensor batch and for a batch without a shape (the DataLoader's
``batch_size`` is counted). The fit's own time per training step (a ``Linear(32, 1)`` model logging 10 metrics a
step, ``logger=False``) is printed for scale. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_metrics import _tiny_fit_parts, quiet_libraries, quiet_trainer

REPEATS = 7


def _per_call_ns(call: Any, calls: int) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for index in range(calls):
            call(index)
        times.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(times)


def measure(calls: int, root: Path) -> dict[str, float]:
    from lightning.pytorch.callbacks import Callback

    from lightning_mlflow_ext import MLflowLogger
    from lightning_mlflow_ext.trainer.bridge import MLflowTrainerBridge

    found: dict[str, float] = {}

    class Probe(Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if found:
                return
            bridge = next(cb for cb in trainer.callbacks if isinstance(cb, MLflowTrainerBridge))
            empty = Callback()
            shapeless = [object()] * len(batch[0])
            found["empty hook"] = _per_call_ns(
                lambda i: empty.on_train_batch_end(trainer, module, None, batch, i), calls
            )
            found["tensor batch"] = _per_call_ns(
                lambda i: bridge.on_train_batch_end(trainer, module, None, batch, i), calls
            )
            found["batch without a shape"] = _per_call_ns(
                lambda i: bridge.on_train_batch_end(trainer, module, None, shapeless, i), calls
            )

    steps = 50
    model, loader = _tiny_fit_parts(steps)
    logger = MLflowLogger(experiment_name="bench-fit-summary", tracking_uri=f"sqlite:///{root}/mlflow.db",
                          save_dir=root / "logs", show_run_link=False)
    quiet_trainer(logger, steps, root, callbacks=[Probe()]).fit(model, loader)

    model, loader = _tiny_fit_parts(1000)
    trainer = quiet_trainer(False, 1000, root)
    start = time.perf_counter()
    trainer.fit(model, loader)
    found["training step (logger=False)"] = (time.perf_counter() - start) / 1000 * 1e9
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="hook calls per repeat (default 100000)")
    args = parser.parse_args()
    quiet_libraries()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        found = measure(args.calls, Path(folder))
    hook = found["tensor batch"] - found["empty hook"]
    print(f"| per call ({args.calls} calls, median of {REPEATS}) | ns |")
    print("|---|---|")
    for name, ns in found.items():
        print(f"| {name} | {ns:,.0f} |")
    print(f"\nThe summary's per-batch work: {hook:,.0f} ns over an empty hook, "
          f"{hook / found['training step (logger=False)']:.3%} of a training step of the tiny model.")


if __name__ == "__main__":
    main()
