"""A screenshot of MLflow's UI showing a fit's checkpoints as logged models, with their metrics: docs/logged_models.png.

    python tools/screenshot_ui.py [--out docs/logged_models.png]

Starts a real ``mlflow server`` on a free loopback port (in a temporary folder), runs a short fit of the
test-suite's tiny model with ``log_model="all"``, a ``ModelCheckpoint(monitor="val_loss", save_top_k=2)`` and
train/val datasets from a throwaway git repository, then takes a headless Chromium screenshot of the
experiment's Models tab. Needs ``chromium`` (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-suite's server, tiny model and git repositories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "logged_models.png"))
    parser.add_argument("--size", default="3600,500", help="window width,height")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("chromium not found: apt-get install -y chromium")

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lineage_repos import git_repo
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer, _free_port
    from tiny import TinyData, TinyModel, make_trainer

    from lightning_mlflow_ext import MLflowCallback, MLflowLogger

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        server = MlflowServer(root / "server", _free_port())
        server.start()
        try:
            os.chdir(root)
            repo = git_repo(root / "project", {"data/train.csv": "x,y\n1,2\n", "data/val.csv": "x,y\n3,4\n"})
            logger = MLflowLogger(experiment_name="checkpoints-as-models", tracking_uri=server.uri, log_model="all")
            datasets = MLflowCallback(datasets={"train": repo / "data/train.csv", "val": repo / "data/val.csv"})
            checkpoint = ModelCheckpoint(dirpath=root / "ckpt", monitor="val_loss", save_top_k=2)
            trainer = make_trainer(logger, max_epochs=4, enable_checkpointing=True, callbacks=[datasets, checkpoint])
            trainer.fit(TinyModel(), TinyData())
            # The UI's "Model training" view of the experiment (MLflow 3 opens a new experiment as GenAI).
            client = MlflowClient(server.uri)
            client.set_experiment_tag(logger.experiment_id, "mlflow.experimentKind", "custom_model_development")
            url = f"{server.uri}/#/experiments/{logger.experiment_id}/models?workflowType=machine_learning"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--screenshot={os.path.abspath(args.out)}", f"--window-size={args.size}",
                 "--virtual-time-budget=15000", url],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            # MLflow's assistant panel opens by itself on a first visit: cut it off, the table is what matters.
            from PIL import Image

            with Image.open(args.out) as shot:
                table = shot.crop((0, 0, shot.width - 700, 330))
            table.save(args.out)
            print(f"{url} -> {args.out}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
