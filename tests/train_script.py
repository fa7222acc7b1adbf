"""A training script run as a real subprocess by the distributed / resume tests.

Each process writes ``<report>/rank<global rank>.json`` with what its logger saw (run id, version, log dir),
so a test can check that every rank agreed. ``--kill-at-step N`` SIGKILLs the process mid-epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny import TinyData, TinyModel

from lightning_mlflow_ext import MLflowCallback, MLflowLogger


class KillAt(Callback):
    """SIGKILL this process (no cleanup of any kind) at a global step, after the step's metrics are logged."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: lightning.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.loggers[0].flush(30)  # what was logged before the kill is in the run (the worst case)
            os.kill(os.getpid(), signal.SIGKILL)


class Report(Callback):
    """Each rank writes what its logger says, from inside the fit (a ddp_spawn worker too)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        logger = trainer.loggers[0]
        assert isinstance(logger, MLflowLogger)
        report = {"run_id": logger.run_id, "version": logger.version, "log_dir": logger.log_dir, "pid": os.getpid()}
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.json"), "w") as out:
            json.dump(report, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--ckpt-dir", default=None, help="ModelCheckpoint dirpath (default: the logger's folder)")
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--test", action="store_true", help="trainer.test() after the fit")
    parser.add_argument("--server-wait", type=float, default=30.0)
    parser.add_argument("--save-hpc", action="store_true", help="save hpc_ckpt_1.ckpt as SLURM's requeue does")
    args = parser.parse_args()

    logger = MLflowLogger(
        experiment_name=args.experiment,
        tracking_uri=args.tracking_uri,
        log_model="all",
        server_wait=args.server_wait,
    )
    callbacks: list[Callback] = [
        Report(args.report),
        MLflowCallback(),  # picklable for ddp_spawn; records trainer settings, optimizers, lr on rank 0
        ModelCheckpoint(dirpath=args.ckpt_dir, monitor="val_loss", save_top_k=2, save_last=True),
        ModelCheckpoint(dirpath=args.ckpt_dir, filename="every-{epoch}", every_n_epochs=1, save_top_k=-1),
    ]
    if args.kill_at_step is not None:
        callbacks.append(KillAt(args.kill_at_step))
    trainer = lightning.Trainer(
        logger=logger,
        callbacks=callbacks,
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=os.getcwd(),
    )
    model = TinyModel(lr=0.05)
    trainer.fit(model, TinyData(), ckpt_path=args.ckpt_path)
    if args.save_hpc:
        trainer.save_checkpoint(os.path.join(os.getcwd(), "hpc_ckpt_1.ckpt"))  # what SLURM's SIGUSR1 handler saves
    if args.test:
        trainer.test(model, TinyData())


if __name__ == "__main__":
    main()
