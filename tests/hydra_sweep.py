"""A Hydra app run as a real subprocess by the sweep tests: ``python hydra_sweep.py -m lr=0.1,0.01``.

Each job fits the tiny model briefly with an ``MLflowLogger`` given nothing about the sweep; the store is
``MLFLOW_TRACKING_URI``, the experiment ``MLFLOW_EXPERIMENT_NAME``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger

ConfigStore.instance().store(name="train", node={"lr": 0.1, "hidden": 4})


@hydra.main(version_base=None, config_name="train")
def main(cfg: DictConfig) -> None:
    logger = MLflowLogger()
    trainer = make_trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(TinyModel(lr=cfg.lr, hidden=cfg.hidden), TinyData())


if __name__ == "__main__":
    main()
