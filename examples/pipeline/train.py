"""Step 2: train on two CPU processes (DDP, gloo) in the run named by MLFLOW_RUN_ID. The run stays open."""

from __future__ import annotations

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from model import CSVData, Regression

from lightning_mlflow_ext import MLflowCallback, MLflowLogger


def main() -> None:
    logger = MLflowLogger(log_model=True)  # MLFLOW_RUN_ID: log into the pipeline's run, leave it RUNNING
    trainer = lightning.Trainer(
        logger=logger,
        callbacks=[MLflowCallback(), ModelCheckpoint(monitor="val_loss", save_top_k=1)],
        max_epochs=3,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(Regression(), CSVData())


if __name__ == "__main__":
    main()
