"""Step 3: predict with the run's best checkpoint, record the predictions, and end the run (end_run=True)."""

from __future__ import annotations

import os

import torch
from model import DATA_DIR, Regression, read_csv

from lightning_mlflow_ext import MLflowLogger, load_model


def main() -> None:
    with MLflowLogger(end_run=True) as logger:  # the last step: FINISHED on success, FAILED on an error
        model = load_model(Regression, os.environ["MLFLOW_RUN_ID"], "best", tracking_uri=logger.tracking_uri)
        x, y = read_csv(DATA_DIR / "val.csv").tensors
        with torch.no_grad():
            predictions = model(x)
        logger.log_metrics({"predict_mse": torch.nn.functional.mse_loss(predictions, y).item()}, step=0)
        logger.log_table({"target": y.squeeze(1).tolist(), "prediction": predictions.squeeze(1).tolist()},
                         "predictions.json")


if __name__ == "__main__":
    main()
