"""A LightningCLI training script for tests/test_lightning_cli.py (run as a real subprocess).

    python tests/cli_train.py [--lightning-save-config] fit --config cfg.yaml \
        --trainer.logger=lightning_mlflow_ext.MLflowLogger --trainer.logger.init_args.tracking_uri=...

The model and data are tests/tiny.py's. ``--lightning-save-config`` (before the subcommand) uses Lightning's own
``SaveConfigCallback`` instead of ``MLflowSaveConfigCallback``; ``--pytorch-lightning`` runs ``pytorch_lightning``'s
LightningCLI, Trainer and callback, with the model and data as ``pytorch_lightning`` classes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from tiny import TinyData, TinyModel, pytorch_lightning_tiny

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
    cli: type[LightningCLI] = LightningCLI
    model, data = TinyModel, TinyData
    while len(sys.argv) > 1 and sys.argv[1] in ("--lightning-save-config", "--pytorch-lightning"):
        flag = sys.argv.pop(1)
        if flag == "--lightning-save-config":
            callback = SaveConfigCallback
        else:
            import pytorch_lightning.cli

            cli, callback = pytorch_lightning.cli.LightningCLI, pytorch_lightning.cli.SaveConfigCallback
            model, data = pytorch_lightning_tiny()
    cli(
        model,
        data,
        save_config_callback=callback,
        trainer_defaults=QUIET_CPU,
        seed_everything_default=0,
    )


if __name__ == "__main__":
    main()
