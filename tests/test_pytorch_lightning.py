"""``import pytorch_lightning as pl``: the separate copy of Lightning, with classes and an entry-point group of its own.

The fits run a real ``pytorch_lightning.Trainer`` with ``tiny``'s model and data as ``pytorch_lightning`` classes.
They need this package's ``pytorch_lightning.callbacks_factory`` entry point: the installed one, or, while the
installed metadata predates it (an editable install does not re-read pyproject.toml), the one pyproject.toml
declares, put on ``sys.path`` as a metadata folder of its own (``pl_entry_point``).
``test_public_api.py::test_entry_point_loads`` checks the installed metadata itself.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import lightning
import pytest
import pytorch_lightning
import yaml
from mlflow import MlflowClient
from tiny import pytorch_lightning_tiny, trainer_settings

from lightning_mlflow_ext import MLflowCallback, MLflowLogger, autolog
from lightning_mlflow_ext.trainer.autolog import callbacks_factory

GROUP = "pytorch_lightning.callbacks_factory"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FACTORY = "lightning_mlflow_ext.trainer.autolog:callbacks_factory"


def declared_entry_points(group: str) -> dict[str, str]:
    """The entry points pyproject.toml declares in ``group`` (read as text: ``tomllib`` needs Python 3.11)."""
    header = f'[project.entry-points."{group}"]'
    lines = PYPROJECT.read_text().splitlines()
    if header not in lines:
        return {}
    found: dict[str, str] = {}
    for line in lines[lines.index(header) + 1 :]:
        if not line.strip() or line.startswith("["):
            break
        name, _, value = line.partition("=")
        found[name.strip()] = value.strip().strip('"')
    return found


@pytest.fixture
def pl_entry_point(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The folders a process needs on its path to see the entry point (none once it is installed)."""
    folders: list[str] = []
    if not [point for point in entry_points(group=GROUP) if point.value == FACTORY]:
        declared = declared_entry_points(GROUP)
        info = tmp_path_factory.mktemp("metadata") / "lightning_mlflow_ext_pyproject-0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning-mlflow-ext-pyproject\nVersion: 0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in declared.items())
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
        monkeypatch.syspath_prepend(str(info.parent))
        folders.append(str(info.parent))
    yield folders
    import lightning_mlflow_ext.trainer.autolog as autologging

    autologging._options = None  # autolog() off again, as in a fresh process
    autologging._enabled = False


def make_pl_trainer(logger: Any, **overrides: Any) -> pytorch_lightning.Trainer:
    """``tiny.make_trainer``, as a ``pytorch_lightning.Trainer``."""
    return pytorch_lightning.Trainer(logger=logger, **trainer_settings(**overrides))


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_pyproject_registers_the_factory_for_both_namespaces() -> None:
    assert declared_entry_points("lightning.pytorch.callbacks_factory") == {"lightning_mlflow_ext": FACTORY}
    assert declared_entry_points(GROUP) == {"lightning_mlflow_ext": FACTORY}


def test_a_pytorch_lightning_fit_records_validation_metrics_at_step_epoch(
    pl_entry_point, tracking_uri, client, experiment_name
):
    model, data = pytorch_lightning_tiny()
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    # One callback, not a list: pytorch_lightning's Trainer accepts it only as its own Callback class.
    trainer = make_pl_trainer(logger, max_epochs=3, callbacks=MLflowCallback())
    trainer.fit(model(lr=0.05), data())

    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert steps(client, logger.run_id, "val_loss") == [0, 1, 2]  # not the global steps 7, 15, 23
    assert steps(client, logger.run_id, "train_loss_epoch") == [0, 1, 2]
    assert steps(client, logger.run_id, "train_loss_step") == list(range(24))
    assert run.data.params["lr"] == "0.05"
    assert run.data.params["trainer/max_epochs"] == "3" and run.data.params["optimizer/0/name"] == "SGD"


def test_autolog_records_a_pytorch_lightning_fit(pl_entry_point, tracking_uri, client, experiment_name):
    autolog(experiment_name=experiment_name, tracking_uri=tracking_uri)
    model, data = pytorch_lightning_tiny()
    monitor = pytorch_lightning.callbacks.LearningRateMonitor(logging_interval="step")
    make_pl_trainer(False, max_epochs=2, callbacks=[monitor]).fit(model(lr=0.07), data(batch_size=16))

    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert run.info.status == "FINISHED"
    assert params["lr"] == "0.07" and params["batch_size"] == "16"
    assert params["trainer/max_epochs"] == "2" and params["optimizer/0/group/0/lr"] == "0.07"
    assert params["model/total_params"] == "41"
    assert steps(client, run.info.run_id, "val_loss") == [0, 1]
    assert steps(client, run.info.run_id, "train_loss_step") == list(range(8))
    # pytorch_lightning's LearningRateMonitor records the learning rate: MLflowCallback does not record it again.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr-SGD")] == list(range(8))


def test_a_pytorch_lightning_model_checkpoint_is_uploaded_with_log_model_true(
    pl_entry_point, tracking_uri, client, experiment_name, tmp_path
):
    model, data = pytorch_lightning_tiny()
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, log_model=True)
    callback = pytorch_lightning.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    make_pl_trainer(logger, max_epochs=2, enable_checkpointing=True, callbacks=[callback]).fit(model(), data())

    best = os.path.basename(callback.best_model_path)
    files = [artifact.path for artifact in client.list_artifacts(logger.run_id, "checkpoints/val_loss")]
    assert f"checkpoints/val_loss/{best}" in files
    assert f"checkpoints/val_loss/{best}.json" in files


def test_with_pytorch_lightning_imported_the_classes_belong_to_both_namespaces(tracking_uri):
    logger = MLflowLogger(tracking_uri=tracking_uri)
    assert isinstance(logger, pytorch_lightning.loggers.Logger) and isinstance(logger, lightning.pytorch.loggers.Logger)
    for callback in [MLflowCallback(), *callbacks_factory()]:
        assert isinstance(callback, pytorch_lightning.Callback) and isinstance(callback, lightning.pytorch.Callback)
    assert type(pickle.loads(pickle.dumps(logger))) is type(logger)  # ddp_spawn sends it to its workers
    from lightning_mlflow_ext.pytorch_lightning import MLflowLogger as ForPytorchLightning

    assert issubclass(ForPytorchLightning, pytorch_lightning.loggers.Logger) and type(logger) is ForPytorchLightning


def test_pytorch_lightning_is_not_imported_unless_the_program_did(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from lightning_mlflow_ext import MLflowCallback, MLflowLogger
        from lightning_mlflow_ext.trainer.autolog import callbacks_factory

        logger = MLflowLogger(tracking_uri="sqlite:///{tmp_path}/mlflow.db")
        callbacks = [MLflowCallback(), *callbacks_factory()]
        print(type(logger).__module__, sorted({{type(cb).__module__ for cb in callbacks}}))
        print("pytorch_lightning" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == [
        "lightning_mlflow_ext.trainer.logger ['lightning_mlflow_ext.trainer.bridge', "
        "'lightning_mlflow_ext.trainer.callback']",
        "False",
    ]


def test_pytorch_lightnings_cli_takes_the_classes_by_class_path_and_runs_twice_in_one_folder(pl_entry_point, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    package = "lightning_mlflow_ext.pytorch_lightning"
    config = {
        "model": {"lr": 0.05},
        "data": {"batch_size": 8, "n_train": 32},
        "trainer": {
            "max_epochs": 2,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": f"{package}.MLflowLogger",
                "init_args": {"experiment_name": "pl-cli", "tracking_uri": uri},
            },
            "callbacks": [{"class_path": f"{package}.MLflowCallback"}],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([*pl_entry_point, *filter(None, [os.environ.get("PYTHONPATH")])])
    script = Path(__file__).with_name("cli_train.py")
    command = [sys.executable, str(script), "--lightning-save-config", "--pytorch-lightning", "fit", "--config"]
    for lr in ("0.05", "0.02"):  # pytorch_lightning's own SaveConfigCallback, twice in the same folder
        done = subprocess.run(
            [*command, "config.yaml", f"--model.lr={lr}"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-4000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pl-cli")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.data.params["lr"] for run in runs] == ["0.05", "0.02"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["trainer/max_epochs"] == "2"  # MLflowCallback from its class path
        assert steps(client, run.info.run_id, "val_loss") == [0, 1]
        text = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / run.info.run_id)))
        assert yaml.safe_load(text.read_text())["model"]["lr"] == float(run.data.params["lr"])
