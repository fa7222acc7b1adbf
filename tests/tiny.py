"""Tiny deterministic Lightning model/data used by the test-suite (``from tiny import ...``)."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

N_FEATURES = 8
N_VAL = 32
N_TEST = 32


def _make_split(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N_FEATURES, 1, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, N_FEATURES, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _classes(namespace: ModuleType) -> tuple[type[Any], type[Any]]:
    """TinyModel and TinyData as classes of ``namespace``: ``lightning`` or ``pytorch_lightning``."""

    class TinyModel(namespace.LightningModule):
        """Linear(8, hidden) -> Linear(hidden, 1) regression.

        Logged keys: ``train_loss`` (on_step+on_epoch -> ``train_loss_step`` / ``train_loss_epoch``),
        ``train_mse`` (step only), ``val_loss`` (epoch), ``test_loss`` (epoch).
        ``fail_at_step`` raises ``RuntimeError("boom")`` and ``interrupt_at_step`` raises
        ``KeyboardInterrupt`` in ``training_step`` when ``self.global_step`` equals the value.
        """

        def __init__(
            self,
            lr: float = 0.1,
            hidden: int = 4,
            fail_at_step: int | None = None,
            interrupt_at_step: int | None = None,
            **extra: Any,
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(N_FEATURES, hidden),
                torch.nn.Linear(hidden, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            if self.hparams.fail_at_step is not None and self.global_step == self.hparams.fail_at_step:
                raise RuntimeError("boom")
            if self.hparams.interrupt_at_step is not None and self.global_step == self.hparams.interrupt_at_step:
                raise KeyboardInterrupt
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train_mse", loss)
            return loss

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            self.log("test_loss", self._loss(batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


    class TinyData(namespace.LightningDataModule):
        """Synthetic deterministic regression data: ``n_train`` train / 32 val / 32 test samples."""

        def __init__(self, batch_size: int = 8, n_train: int = 64) -> None:
            super().__init__()
            self.save_hyperparameters()

        def setup(self, stage: str | None = None) -> None:
            self.train_set = _make_split(self.hparams.n_train, seed=1)
            self.val_set = _make_split(N_VAL, seed=2)
            self.test_set = _make_split(N_TEST, seed=3)

        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=False, num_workers=0)

        def val_dataloader(self) -> DataLoader[Any]:
            return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=0)

        def test_dataloader(self) -> DataLoader[Any]:
            return DataLoader(self.test_set, batch_size=self.hparams.batch_size, num_workers=0)

    TinyModel.__qualname__, TinyData.__qualname__ = "TinyModel", "TinyData"  # found again when unpickled
    return TinyModel, TinyData


TinyModel, TinyData = _classes(lightning)


def pytorch_lightning_tiny() -> tuple[type[Any], type[Any]]:
    """``TinyModel`` and ``TinyData`` for ``pytorch_lightning`` (which this imports), as ``tiny.PLTinyModel`` /
    ``tiny.PLTinyData`` (so that they pickle)."""
    import pytorch_lightning

    if "PLTinyModel" not in globals():
        model, data = _classes(pytorch_lightning)
        for cls, name in ((model, "PLTinyModel"), (data, "PLTinyData")):
            cls.__name__ = cls.__qualname__ = name
            globals()[name] = cls
    return globals()["PLTinyModel"], globals()["PLTinyData"]


def make_trainer(logger: Any, **overrides: Any) -> lightning.Trainer:
    """A fast, quiet, deterministic CPU trainer rooted at the current directory (tmp_path in tests)."""
    return lightning.Trainer(logger=logger, **trainer_settings(**overrides))


def trainer_settings(**overrides: Any) -> dict[str, Any]:
    """``make_trainer``'s Trainer arguments (for a Trainer of either Lightning namespace)."""
    kwargs: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "deterministic": True,
        "default_root_dir": os.getcwd(),
    }
    kwargs.update(overrides)
    return kwargs
