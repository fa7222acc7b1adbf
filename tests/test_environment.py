"""What ran a run (python, torch, lightning, mlflow, host, GPUs, SLURM job, world size, precision, lock files,
installed packages) is recorded on every run, whichever way the package is used, and never a secret. Real
Trainers into the embedded store, checked through MlflowClient."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import lightning
import mlflow
import pytest
import torch
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer, trainer_settings

from lightning_mlflow_ext import MLflowCallback, MLflowLogger, autolog
from lightning_mlflow_ext.run.environment import PACKAGES_ARTIFACT, parse_nvidia_smi, visible_gpus
from lightning_mlflow_ext.run.tags import ENV_TAG_PREFIX, env_tag, env_variable_tag, lockfile_tag

SECRET = "s3cret"


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded SQLite store for the module (creating one takes seconds); each test has its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture
def _autolog_off() -> Iterator[None]:
    yield
    import lightning_mlflow_ext.trainer.autolog as autologging

    autologging._options = None
    autologging._enabled = False


def env_tags(client: MlflowClient, run_id: str) -> dict[str, str]:
    return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(ENV_TAG_PREFIX)}


def test_a_fit_records_what_ran_it_and_no_secret(uri, experiment_name, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    monkeypatch.setenv("MY_CLUSTER", "blue")  # allow-listed by the user below
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    monkeypatch.setenv("SLURM_SECRET_KEY", SECRET)
    monkeypatch.setenv("HOME_DIR_PASSWORD", SECRET)
    (tmp_path / "uv.lock").write_text("version = 1\n")  # the working directory (tmp_path) is the project's
    logger = MLflowLogger(tracking_uri=uri, experiment_name=experiment_name, log_environment=["MY_CLUSTER"])
    make_trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(TinyModel(), TinyData())

    client = MlflowClient(uri)
    tags = env_tags(client, logger.run_id)
    assert tags[env_tag("python")].count(".") == 2
    assert tags[env_tag("torch")] == torch.__version__
    assert tags[env_tag("lightning")] == lightning.__version__
    assert tags[env_tag("mlflow")] == mlflow.__version__
    assert tags[env_tag("host")]
    assert tags[env_tag("world_size")] == "1"
    assert tags[env_tag("precision")] == "32-true"
    assert tags[env_tag("strategy")] == "SingleDeviceStrategy"
    assert tags[env_tag("accelerator")] == "CPUAccelerator"
    assert tags[env_variable_tag("SLURM_JOB_ID")] == "4242"
    assert tags[env_variable_tag("SLURM_ARRAY_TASK_ID")] == "7"
    assert tags[env_variable_tag("SLURM_JOB_NODELIST")] == "gpu[01-02]"
    assert tags[env_variable_tag("MY_CLUSTER")] == "blue"
    assert tags[lockfile_tag("uv.lock")] == hashlib.sha256(b"version = 1\n").hexdigest()

    packages = Path(client.download_artifacts(logger.run_id, PACKAGES_ARTIFACT, str(tmp_path / "packages")))
    lines = packages.read_text().splitlines()
    assert f"torch=={torch.__version__}" in lines
    names = [line.partition("==")[0] for line in lines]
    assert names == sorted(names)

    # The secret is nowhere in the run: tags, params, any artifact.
    run = client.get_run(logger.run_id)
    assert SECRET not in repr(run.data.tags) + repr(run.data.params)
    everything = Path(client.download_artifacts(logger.run_id, "", str(tmp_path / "all")))
    for path in everything.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_a_secret_looking_or_malformed_name_is_refused_before_any_run(uri):
    with pytest.raises(ValueError, match=r"'MY_API_TOKEN', which looks like a secret"):
        MLflowLogger(tracking_uri=uri, log_environment=["MY_API_TOKEN"])
    with pytest.raises(ValueError, match=r"'DB_HOST', which looks like a secret"):
        MLflowLogger(tracking_uri=uri, log_environment=["DB_HOST"], redact=["db_host"])  # the user's own words
    with pytest.raises(ValueError, match=r"not an environment variable name"):
        MLflowLogger(tracking_uri=uri, log_environment=["SLURM JOB"])
    with pytest.raises(ValueError, match=r"a list of environment variable names"):
        MLflowLogger(tracking_uri=uri, log_environment="SLURM_JOB_QOS")  # type: ignore[arg-type]


def test_the_callback_alone_records_the_environment(uri, experiment_name):
    options = {"tracking_uri": uri, "experiment_name": experiment_name}
    trainer = make_trainer(
        False,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[MLflowCallback(logger_options=options)],
    )
    trainer.fit(TinyModel(), TinyData())
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.data.tags[env_tag("torch")] == torch.__version__
    assert [a.path for a in client.list_artifacts(run.info.run_id, "environment")] == [PACKAGES_ARTIFACT]


@pytest.mark.usefixtures("_autolog_off")
def test_autolog_with_log_environment_false_records_none_of_it(uri, experiment_name):
    autolog(tracking_uri=uri, experiment_name=experiment_name, log_environment=False, mlflow_compat=False)
    quick = trainer_settings(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    lightning.Trainer(logger=False, **quick).fit(TinyModel(), TinyData())
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.info.status == "FINISHED"
    assert not [key for key in run.data.tags if key.startswith(ENV_TAG_PREFIX)]
    assert not client.list_artifacts(run.info.run_id, "environment")


def test_a_run_that_holds_an_environment_keeps_it(uri, experiment_name):
    # A pipeline step, or a fit resumed on another machine: the run keeps what the first process recorded.
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment_name)
    run_id = client.create_run(experiment_id, tags={env_tag("host"): "first-machine"}).info.run_id
    logger = MLflowLogger(tracking_uri=uri, run_id=run_id)
    make_trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(TinyModel(), TinyData())
    tags = env_tags(client, run_id)
    assert tags[env_tag("host")] == "first-machine"
    assert tags[env_tag("torch")] == torch.__version__  # what it lacked is added
    assert not client.list_artifacts(run_id, "environment")


def test_the_gpus_a_process_sees_follow_cuda_visible_devices():
    smi = parse_nvidia_smi(
        "0, GPU-aaaa1111, NVIDIA A100-SXM4-80GB, 81920, 550.54.15\n"
        "1, GPU-bbbb2222, NVIDIA A100-SXM4-80GB, 81920, 550.54.15\n"
        "2, GPU-cccc3333, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n"
    )
    assert [gpu.index for gpu in visible_gpus(smi, None) or []] == ["0", "1", "2"]
    assert [gpu.index for gpu in visible_gpus(smi, "2,0") or []] == ["2", "0"]
    assert [gpu.index for gpu in visible_gpus(smi, "GPU-bbbb") or []] == ["1"]
    assert visible_gpus(smi, "") == []
    assert visible_gpus(smi, "-1") == []
    assert visible_gpus(smi, "MIG-1234") == smi  # an instance of a GPU: which one is not known here
    assert [gpu.index for gpu in visible_gpus(smi, "1,7,2") or []] == ["1"]  # CUDA stops at the first unknown
    assert visible_gpus(None, "0") is None
