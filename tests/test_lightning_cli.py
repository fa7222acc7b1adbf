"""LightningCLI: MLflowLogger and MLflowCallback from a YAML config, the resolved config recorded in the run.

Every test runs tests/cli_train.py as a real subprocess (``python cli_train.py fit --config ...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import yaml

from lightning_mlflow_ext.values.config_file import redact_config
from lightning_mlflow_ext.values.redaction import DEFAULT_REDACTOR, REDACTED, Redactor

SCRIPT = Path(__file__).with_name("cli_train.py")
EXPERIMENT = "cli"
SAVE_DIR = "lightning_logs"  # MLflowLogger's default save_dir, under the working directory
SECRET = "s3cr3t-value"


def write_config(
    tmp_path: Path,
    *,
    datasets: bool = True,
    checkpoints: bool = False,
    name: str = "cfg.yaml",
    tracking_uri: str | None = None,
) -> tuple[Path, Path]:
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (data / "part-0.csv").write_text("a,b\n1,2\n")
    config: dict[str, Any] = {
        "model": {"lr": 0.05, "hidden": 3},
        "data": {"batch_size": 8, "n_train": 32},
        "trainer": {
            "max_epochs": 2,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "log_every_n_steps": 1,
            "enable_checkpointing": checkpoints,
            "logger": {
                "class_path": "lightning_mlflow_ext.MLflowLogger",
                "init_args": {"experiment_name": EXPERIMENT, "tags": {"team": "vision", "api_token": SECRET}},
            },
            "callbacks": [
                {
                    "class_path": "lightning_mlflow_ext.MLflowCallback",
                    "init_args": {"datasets": {"train": str(data)}, "lineage": "warn"},
                }
            ],
        },
    }
    if not datasets:
        del config["trainer"]["callbacks"]
    if tracking_uri is not None:
        config["trainer"]["logger"]["init_args"]["tracking_uri"] = tracking_uri
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, data


def run_cli(
    tmp_path: Path, config: Path, *extra: str, lightning_save_config: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT)]
    if lightning_save_config:
        command.append("--lightning-save-config")
    command += [
        "fit",
        "--config",
        str(config),
        # The class on the command line, its init args from the YAML and the command line merged.
        "--trainer.logger=lightning_mlflow_ext.MLflowLogger",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def check_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-6000:]}"


def runs(client: mlflow.MlflowClient) -> list[Any]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_cli_records_config_as_artifact_and_params_with_datasets_and_metrics_one_run_per_call(tmp_path):
    config, data = write_config(tmp_path)
    check_ok(run_cli(tmp_path, config))

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = runs(client)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"

    params = run.data.params
    # The resolved config, flattened under config/, with the values of the YAML and of the command line.
    assert params["config/model/lr"] == "0.05"
    assert params["config/model/hidden"] == "3"
    assert params["config/data/n_train"] == "32"
    assert params["config/trainer/max_epochs"] == "2"
    assert params["config/trainer/limit_train_batches"] == "3"
    assert params["config/trainer/logger/init_args/experiment_name"] == EXPERIMENT
    assert params["config/trainer/logger/init_args/tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert "lightning_mlflow_ext.MLflowCallback" in params["config/trainer/callbacks"]
    # The model's own hyperparameters, as Lightning logs them.
    assert params["lr"] == "0.05" and params["hidden"] == "3"
    # The init args reached the logger: its tags are on the run, the secret one redacted.
    assert run.data.tags["team"] == "vision"
    assert params["config/trainer/logger/init_args/tags/api_token"] == REDACTED
    assert not [key for key, value in params.items() if SECRET in value]

    # The config artifact parses back to the YAML's values; the secret is not in it.
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path / "download"))
    text = Path(local).read_text()
    assert SECRET not in text
    uploaded = yaml.safe_load(text)
    assert uploaded["model"]["lr"] == 0.05 and uploaded["model"]["hidden"] == 3
    assert uploaded["trainer"]["max_epochs"] == 2 and uploaded["trainer"]["limit_val_batches"] == 2
    assert uploaded["trainer"]["logger"]["class_path"].endswith("MLflowLogger")
    assert uploaded["trainer"]["logger"]["init_args"]["tags"] == {"team": "vision", "api_token": REDACTED}
    (callback,) = uploaded["trainer"]["callbacks"]
    assert callback["class_path"].endswith("MLflowCallback")
    assert callback["init_args"]["datasets"] == {"train": str(data)} and callback["init_args"]["lineage"] == "warn"

    # The local copy, as Lightning writes it, but in the run's own folder (save_dir: ./lightning_logs here).
    saved = tmp_path / SAVE_DIR / EXPERIMENT / run_id / "config.yaml"
    assert yaml.safe_load(saved.read_text())["model"]["lr"] == 0.05
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / SAVE_DIR / "config.yaml").exists()

    # MLflowCallback's datasets mapping from the YAML: one dataset input for the train split.
    contexts = [
        next(tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context")
        for dataset_input in run.inputs.dataset_inputs
    ]
    assert contexts == ["train"]
    assert run.data.tags["lightning_mlflow_ext.lineage"] == "incomplete"  # a folder outside git, lineage="warn"

    # Metrics: 3 steps x 2 epochs, epoch-level ones at step = epoch, and no (key, step) stored twice.
    metrics = run.data.metrics
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "epoch"} <= set(metrics)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss_step")] == list(range(6))
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [0, 1]
    for key in metrics:
        steps = Counter(m.step for m in client.get_metric_history(run_id, key))
        assert [step for step, count in steps.items() if count > 1] == [], key

    # A second CLI run in the same folder: its own run, its own local config.yaml (no clash with the first).
    check_ok(run_cli(tmp_path, config, "--model.lr=0.02"))
    first, second = runs(client)
    assert first.info.run_id == run_id and second.info.status == "FINISHED"
    assert second.data.params["config/model/lr"] == "0.02" and second.data.params["lr"] == "0.02"
    local_second = tmp_path / SAVE_DIR / EXPERIMENT / second.info.run_id / "config.yaml"
    assert yaml.safe_load(local_second.read_text())["model"]["lr"] == 0.02
    artifact = client.download_artifacts(second.info.run_id, "config.yaml", str(tmp_path / "download2"))
    assert yaml.safe_load(Path(artifact).read_text())["model"]["lr"] == 0.02


def test_lightnings_own_save_config_callback_runs_again_in_the_same_folder_and_records_the_config(tmp_path):
    # python main.py fit --config config.yaml: the config in the working directory, the logger configured in it,
    # Lightning's own SaveConfigCallback (it writes config.yaml into Trainer.log_dir, the logger's save_dir).
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config, _ = write_config(tmp_path, datasets=False, checkpoints=True, name="config.yaml", tracking_uri=uri)
    written = config.read_text()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}

    def fit(*extra: str) -> None:
        command = [sys.executable, str(SCRIPT), "--lightning-save-config", "fit", "--config", "config.yaml", *extra]
        check_ok(subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240))

    fit()
    fit("--model.lr=0.02")  # the same folder again: Lightning finds no config.yaml in its way

    client = mlflow.MlflowClient(uri)
    first, second = runs(client)
    save_dir = tmp_path / SAVE_DIR
    for run, lr in ((first, 0.05), (second, 0.02)):
        run_id = run.info.run_id
        assert run.info.status == "FINISHED" and run.data.params["lr"] == str(lr)
        # The config Lightning wrote: in the run's folder, next to its checkpoints, and the run's artifact.
        folder = save_dir / EXPERIMENT / run_id
        assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["lr"] == lr
        assert list((folder / "checkpoints").glob("*.ckpt"))
        text = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / run_id))).read_text()
        uploaded = yaml.safe_load(text)
        assert uploaded["model"]["lr"] == lr and uploaded["trainer"]["max_epochs"] == 2
        assert uploaded["trainer"]["logger"]["init_args"]["tags"] == {"team": "vision", "api_token": REDACTED}
        assert SECRET not in text
    assert not (save_dir / "config.yaml").exists()
    assert config.read_text() == written  # the user's own config.yaml is left alone

    # Resuming the first run from its checkpoint continues it, in its folder; this invocation's config replaces it.
    (checkpoint,) = (save_dir / EXPERIMENT / first.info.run_id / "checkpoints").glob("*.ckpt")
    fit("--trainer.max_epochs=3", f"--ckpt_path={checkpoint}")
    assert [run.info.run_id for run in runs(client)] == [first.info.run_id, second.info.run_id]
    assert [m.step for m in client.get_metric_history(first.info.run_id, "train_loss_step")] == list(range(9))
    local = yaml.safe_load((save_dir / EXPERIMENT / first.info.run_id / "config.yaml").read_text())
    assert local["trainer"]["max_epochs"] == 3
    artifact = client.download_artifacts(first.info.run_id, "config.yaml", str(tmp_path / "resumed"))
    assert yaml.safe_load(Path(artifact).read_text())["trainer"]["max_epochs"] == 3
    assert not (save_dir / "config.yaml").exists()


def test_a_fit_that_fails_before_training_leaves_no_config_in_the_way_of_the_next(tmp_path):
    # A negative learning rate: the optimizer refuses it after Lightning's SaveConfigCallback wrote config.yaml
    # into save_dir and before the sanity check. The next run in the same folder must start all the same.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    write_config(tmp_path, datasets=False, checkpoints=True, name="config.yaml", tracking_uri=uri)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    command = [sys.executable, str(SCRIPT), "--lightning-save-config", "fit", "--config", "config.yaml"]
    failed = subprocess.run([*command, "--model.lr=-1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    assert failed.returncode != 0 and "Invalid learning rate" in failed.stderr, failed.stderr[-2000:]
    assert not (tmp_path / SAVE_DIR / "config.yaml").exists()
    check_ok(subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240))

    client = mlflow.MlflowClient(uri)
    statuses = sorted(run.info.status for run in runs(client))
    assert statuses == ["FAILED", "FINISHED"]
    for run in runs(client):  # each run holds the config it was started with
        text = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / run.info.run_id)))
        assert yaml.safe_load(text.read_text())["model"]["lr"] == (-1 if run.info.status == "FAILED" else 0.05)


def test_a_resumed_fit_continues_its_run_and_replaces_the_config(tmp_path):
    # No MLflowCallback(datasets=...) here: it writes into the run at setup, before the checkpoint is read, so a
    # resumed fit with it gets a new run (tagged resumed_from_run) instead of continuing the checkpoint's run.
    config, _ = write_config(tmp_path, datasets=False, checkpoints=True)
    check_ok(run_cli(tmp_path, config))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = runs(client)
    run_id = run.info.run_id
    (checkpoint,) = (tmp_path / SAVE_DIR / EXPERIMENT / run_id / "checkpoints").glob("*.ckpt")

    check_ok(run_cli(tmp_path, config, "--trainer.max_epochs=3", f"--ckpt_path={checkpoint}"))
    (run,) = runs(client)  # the config is recorded once the checkpoint is read: the same run goes on
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss_step")]
    assert steps == list(range(9))
    # This invocation's config, in the run's folder and as the artifact; the param keeps its first value.
    local = yaml.safe_load((tmp_path / SAVE_DIR / EXPERIMENT / run_id / "config.yaml").read_text())
    assert local["trainer"]["max_epochs"] == 3 and local["ckpt_path"] == str(checkpoint)
    artifact = client.download_artifacts(run_id, "config.yaml", str(tmp_path / "download"))
    assert yaml.safe_load(Path(artifact).read_text())["trainer"]["max_epochs"] == 3
    assert run.data.params["config/trainer/max_epochs"] == "2"


def test_redaction_reaches_into_lists_and_urls():
    config = {
        "trainer": {
            "callbacks": [{"class_path": "x.Callback", "init_args": {"api_key": "k", "url": "https://u:pw@host/x"}}],
            "logger": {"init_args": {"tracking_uri": "https://user:pw@mlflow.example/", "run_name": "a"}},
        },
        "model": {"db_password": None, "credentials": {"user": "me"}, "max_tokens": 5},
    }
    assert redact_config(config, "", DEFAULT_REDACTOR) == {
        "trainer": {
            "callbacks": [{"class_path": "x.Callback", "init_args": {"api_key": REDACTED, "url": "https://host/x"}}],
            "logger": {"init_args": {"tracking_uri": "https://mlflow.example/", "run_name": "a"}},
        },
        "model": {"db_password": REDACTED, "credentials": {"user": REDACTED}, "max_tokens": 5},
    }


def test_the_loggers_own_redact_patterns_reach_the_config_file():
    config = {"model": {"wandb_key": "abc", "internal": {"host": "db"}, "lr": 0.1}}
    clean = redact_config(config, "", Redactor.of(["wandb_key", r"^model/internal/"]))
    assert clean == {"model": {"wandb_key": REDACTED, "internal": {"host": REDACTED}, "lr": 0.1}}
