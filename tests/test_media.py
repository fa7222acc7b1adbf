"""Figures, images, tables and checkpoints round trips, as a user finds them through MlflowClient."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import (
    InvalidArtifactPathError,
    MLflowCallback,
    MLflowLogger,
    load_checkpoint,
    load_model,
)


def names(client, run_id: str, path: str) -> list[str]:
    return sorted(os.path.basename(f.path) for f in client.list_artifacts(run_id, path))


def loss_curve(trainer, module):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [3, 2, 1])
    ax.set_title(f"epoch {trainer.current_epoch}")
    return fig


def test_callback_figures_land_at_each_epoch_and_leak_no_figure(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    callback = MLflowCallback(figures={"loss_curve": loss_curve})
    make_trainer(logger, max_epochs=3, num_sanity_val_steps=1, callbacks=[callback]).fit(TinyModel(), TinyData())
    assert names(client, logger.run_id, "figures/loss_curve") == [
        "step_000000.png",
        "step_000001.png",
        "step_000002.png",
    ]
    assert plt.get_fignums() == []


def test_figures_images_tables_text_and_dicts(tracking_uri, client, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    for step in range(3):
        fig = plt.figure()
        plt.plot([step, step + 1])
        logger.log_figure(fig, "curve", step=step)
        logger.log_image(torch.rand(3, 8, 8), "sample", step=step)  # CxHxW tensor
    logger.log_image((np.random.rand(8, 8, 3) * 255).astype(np.uint8), "grid")
    logger.log_table({"epoch": [0, 1], "acc": [0.5, 0.7]}, "tables/acc.json")
    logger.log_text("hello", "notes/readme.txt")
    logger.log_dict({"a": 1}, "config/run.yaml")
    source = tmp_path / "report.csv"
    source.write_text("x,y\n1,2\n")
    logger.log_artifact(source, "reports")
    source.write_text("changed after the call")  # the snapshot taken at the call is what lands
    logger.finalize("success")
    run_id = logger.run_id

    assert names(client, run_id, "figures/curve") == ["step_000000.png", "step_000001.png", "step_000002.png"]
    assert "grid.png" in names(client, run_id, "images")
    samples = [n for n in names(client, run_id, "images") if n.startswith("sample+step+")]
    # MLflow's step-keyed images: a PNG and the compressed WEBP its image grid reads, per step, and the run's tag.
    assert sorted(n.split("+")[2] for n in samples if n.endswith("+compressed.webp")) == ["0", "1", "2"]
    assert sorted(n.split("+")[2] for n in samples if n.endswith(".png")) == ["0", "1", "2"]
    assert client.get_run(run_id).data.tags["mlflow.loggedImages"] == "True"

    def text(path: str) -> str:
        return Path(client.download_artifacts(run_id, path, str(tmp_path / "dl"))).read_text()

    assert json.loads(text("tables/acc.json"))["columns"] == ["epoch", "acc"]
    assert text("notes/readme.txt") == "hello"
    assert "a: 1" in text("config/run.yaml")
    assert text("reports/report.csv") == "x,y\n1,2\n"
    assert plt.get_fignums() == []


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd", "a/../../b", "C:\\x", "a//b", "what?.txt", ""])
def test_unsafe_artifact_names_are_refused(tracking_uri, bad):
    logger = MLflowLogger(tracking_uri=tracking_uri)
    with pytest.raises(InvalidArtifactPathError, match="is refused"):
        logger.log_text("x", bad)


def test_load_checkpoint_round_trip(tracking_uri, client, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=2)
    make_trainer(logger, max_epochs=3, enable_checkpointing=True, callbacks=[callback]).fit(
        TinyModel(lr=0.07), TinyData()
    )

    best = load_checkpoint(logger.run_id, "best", tracking_uri=tracking_uri, dst_path=tmp_path / "dl")
    digest = hashlib.sha256(Path(best).read_bytes()).hexdigest()
    assert digest == hashlib.sha256(Path(callback.best_model_path).read_bytes()).hexdigest()
    latest = load_checkpoint(f"runs:/{logger.run_id}", "latest", tracking_uri=tracking_uri, dst_path=tmp_path / "dl2")
    assert os.path.basename(latest).endswith(".ckpt")
    model = load_model(TinyModel, logger.run_id, tracking_uri=tracking_uri, dst_path=tmp_path / "dl3")
    assert model.hparams.lr == 0.07
