"""A LightningCLI training script for tests/test_lightning_cli.py (run as a real subprocess).

    python tests/cli_train.py [--lightning-save-config] fit --config cfg.yaml \
        --trainer.logger=lightning_mlflow_ext.MLflowLogger --trainer.logger.init_args.tracking_uri=...

The model and data are tests/tiny.py's. ``--lightning-save-config`` (first argument) uses Lightning's own
``SaveConfigCallback`` instead of ``MLflowSaveConfigCallback``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from tiny import TinyData, TinyModel

from lightning_mlflow_ext.trainer.cli import MLflowSaveConfigCallback

QUIET_CPU = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "deterministic": True,
}


def main() -> None:
    callback: type[SaveConfigCallback] = MLflowSaveConfigCallback
    if len(sys.argv) > 1 and sys.argv[1] == "--lightning-save-config":
        del sys.argv[1]
        callback = SaveConfigCallback
    LightningCLI(
        TinyModel,
        TinyData,
        save_config_callback=callback,
        trainer_defaults=QUIET_CPU,
        seed_everything_default=0,
    )


if __name__ == "__main__":
    main()
