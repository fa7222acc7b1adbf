"""A fit that writes every kind of artifact the package makes, for tests/test_durable_writes.py (a real process).

    python tests/durable_train.py --tracking-uri URI --experiment NAME [--stop-server-at-step N --server-pid PID]

``--stop-server-at-step`` SIGTERMs the tracking server's process group after that training step, and the server
stays down until this process has exited. The run id is printed last.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from lightning import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowCallback, MLflowLogger


class EveryWrite(TinyModel):
    """Logs a text, a dict, a file, images and a table every epoch; can stop the server mid-fit."""

    stop_at: int | None = None
    server_pid: int | None = None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.stop_at is not None and self.global_step == self.stop_at and self.server_pid:
            os.killpg(self.server_pid, signal.SIGTERM)

    def on_train_epoch_end(self):
        epoch = self.current_epoch
        self.logger.log_text(f"epoch {epoch} done\n", f"notes/epoch-{epoch}.txt")
        self.logger.log_dict({"epoch": epoch, "lr": self.hparams.lr}, f"state/epoch-{epoch}.json")
        report = Path(f"report-{epoch}.txt")
        report.write_text(f"report of epoch {epoch}\n")
        self.logger.log_artifact(report, "reports")
        pixels = np.full((4, 4, 3), 40 * epoch, dtype=np.uint8)
        self.logger.log_image(pixels, "sample", step=epoch)  # MLflow's step-keyed images
        self.logger.log_image(pixels, f"last-{epoch}")  # images/last-<epoch>.png
        self.logger.log_table({"epoch": [epoch], "lr": [self.hparams.lr]}, "tables/progress.json")  # rows appended


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--stop-server-at-step", type=int, default=None)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--registered-model", default=None, help="register the best model under this name")
    parser.add_argument("--flush-timeout", type=float, default=5, help="what the end of the fit waits for the store")
    parser.add_argument(
        "--stop-server-before-fit", action="store_true", help="stop it once the run exists, before any write"
    )
    args = parser.parse_args()
    seed_everything(0)  # both runs train the same weights: their checkpoints' scores are comparable
    logger = MLflowLogger(
        experiment_name=args.experiment,
        tracking_uri=args.tracking_uri,
        log_model="all",
        flush_timeout=args.flush_timeout,
        log_best_model=True,
        registered_model_name=args.registered_model,
    )
    best = ModelCheckpoint(dirpath="ckpt/best", monitor="val_loss", mode="min", save_top_k=1)
    every = ModelCheckpoint(dirpath="ckpt/every", save_top_k=-1)
    model = EveryWrite(lr=0.05)
    model.stop_at, model.server_pid = args.stop_server_at_step, args.server_pid
    data = Path("data/train")
    data.mkdir(parents=True, exist_ok=True)
    (data / "part-0.csv").write_text("x,y\n1,2\n")
    lineage = MLflowCallback(datasets={"train": str(data)}, log_model_summary=False)
    trainer = make_trainer(logger, max_epochs=3, enable_checkpointing=True, callbacks=[best, every, lineage])
    if args.stop_server_before_fit and args.server_pid:
        _ = logger.run_id  # the run exists; everything after this waits for sync
        os.killpg(args.server_pid, signal.SIGTERM)
    trainer.fit(model, TinyData())
    print(logger.run_id)


if __name__ == "__main__":
    main()
