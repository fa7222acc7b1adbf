"""Step 1: make the data, open the pipeline's run, and print its id for the next steps (MLFLOW_RUN_ID).

    MLFLOW_RUN_ID=$(python preprocess.py) && export MLFLOW_RUN_ID && python train.py && python predict.py
"""

from __future__ import annotations

import torch
from model import DATA_DIR

from lightning_mlflow_ext import MLflowLogger

N_FEATURES, SEED = 8, 0


def write_split(name: str, rows: int, generator: torch.Generator, weights: torch.Tensor) -> None:
    x = torch.randn(rows, N_FEATURES, generator=generator)
    y = x @ weights + 0.1 * torch.randn(rows, 1, generator=generator)
    lines = [",".join(f"{v:.6f}" for v in row) for row in torch.cat([x, y], dim=1).tolist()]
    (DATA_DIR / f"{name}.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    DATA_DIR.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    weights = torch.randn(N_FEATURES, 1, generator=generator)
    write_split("train", 256, generator, weights)
    write_split("val", 64, generator, weights)
    # end_run=False: the run stays RUNNING for the next steps; only the last step ends it.
    with MLflowLogger(experiment_name="pipeline", run_name="preprocess-train-predict", end_run=False) as logger:
        logger.log_hyperparams({"preprocess": {"n_features": N_FEATURES, "seed": SEED, "train_rows": 256}})
        logger.log_datasets({"raw_train": DATA_DIR / "train.csv"})
        print(logger.run_id)  # the only line on stdout: the shell hands it on as MLFLOW_RUN_ID


if __name__ == "__main__":
    main()
