"""Quickstart: train a small regression model on synthetic data and record it in MLflow.

Run from the repository root: ``python examples/quickstart.py``. With no tracking URI set, the run lands
in the embedded SQLite store ``./mlflow.db``; the fit prints the link to its run and the ``mlflow ui`` command that
serves it, and the script the run id.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlflow_ext import MLflowLogger


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16, optimizer: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def synthetic_loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(8, 1, generator=generator)
    x = torch.randn(512, 8, generator=generator)
    y = x @ weights + 0.1 * torch.randn(512, 1, generator=generator)
    train = TensorDataset(x[:448], y[:448])
    val = TensorDataset(x[448:], y[448:])
    return DataLoader(train, batch_size=32, shuffle=True, generator=generator), DataLoader(val, batch_size=64)


def main() -> None:
    L.seed_everything(0, verbose=False)
    logger = MLflowLogger(experiment_name="quickstart", run_name="regressor", tags={"example": "quickstart"})
    trainer = L.Trainer(max_epochs=5, logger=logger, enable_progress_bar=False, log_every_n_steps=5)
    model = Regressor(optimizer={"name": "sgd", "momentum": 0.0})
    train, val = synthetic_loaders()
    trainer.fit(model, train, val)
    trainer.test(model, val)

    print()
    print(f"MLflow run:   {logger.run_id}  (experiment {logger.name!r}, store {logger.tracking_uri})")
    print(f"Summary:      lightning-mlflow show {logger.run_id}")


if __name__ == "__main__":
    main()
