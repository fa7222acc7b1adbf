"""The model and data the three pipeline steps share: a linear regression on a CSV file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

DATA_DIR = Path("pipeline-data")


def read_csv(path: Path) -> TensorDataset:
    with path.open() as f:
        rows = [[float(v) for v in row] for row in csv.reader(f)]
    values = torch.tensor(rows)
    return TensorDataset(values[:, :-1], values[:, -1:])


class Regression(lightning.LightningModule):
    def __init__(self, n_features: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class CSVData(lightning.LightningDataModule):
    def __init__(self, folder: str = str(DATA_DIR), batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        # MLflowCallback records these as the run's dataset inputs, with their git/DVC source.
        self.mlflow_datasets = {"train": Path(folder) / "train.csv", "val": Path(folder) / "val.csv"}

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(read_csv(self.mlflow_datasets["train"]), batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(read_csv(self.mlflow_datasets["val"]), batch_size=self.hparams.batch_size)
