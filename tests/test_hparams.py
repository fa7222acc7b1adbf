"""Hyperparameters as a user reads them back from the run's params."""

from __future__ import annotations

import json
import logging
from argparse import Namespace
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger


@dataclass
class Optim:
    name: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Config:
    optimizer: Optim = field(default_factory=Optim)
    epochs: int = 3


def params_of(client, logger):
    logger.flush()
    return client.get_run(logger.run_id).data.params


def test_nested_configs_are_flattened_with_stable_values(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    cfg = OmegaConf.create({"model": {"width": 64, "depth": "${model.width}"}, "data": {"root": "/data/x"}})
    logger.log_hyperparams(cfg)
    logger.log_hyperparams(Namespace(seed=7, sched=Namespace(kind="cosine")))
    logger.log_hyperparams({"config": Config(), "activation": json.dumps})
    params = params_of(client, logger)
    assert params["model/width"] == "64"
    assert params["model/depth"] == "64"  # interpolation resolved
    assert params["data/root"] == "/data/x"
    assert params["seed"] == "7"
    assert params["sched/kind"] == "cosine"
    assert params["config/optimizer/name"] == "adamw"
    assert params["config/optimizer/betas"] == "(0.9, 0.999)"
    assert params["config/epochs"] == "3"
    assert params["activation"] == "json.dumps"


def test_long_values_are_kept_up_to_mlflows_limit_and_recorded_in_full_beyond(
    tracking_uri, client, experiment_name, tmp_path
):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    medium = "m" * 1000  # Lightning's logger cuts this at 250
    huge = "h" * 7000
    logger.log_hyperparams({"medium": medium, "huge": huge})
    params = params_of(client, logger)
    assert params["medium"] == medium
    assert len(params["huge"]) <= 6000
    assert params["huge"].startswith("h" * 5000)
    assert "truncated" in params["huge"] and "hparams.json" in params["huge"]
    local = client.download_artifacts(logger.run_id, "hparams.json", str(tmp_path))
    with open(local) as handle:
        assert json.load(handle)["huge"] == huge


def test_hundreds_of_params_all_arrive(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    logger.log_hyperparams({f"layer{i}/units": i for i in range(250)})
    params = params_of(client, logger)
    assert len(params) == 250
    assert params["layer249/units"] == "249"


def test_secret_looking_keys_are_redacted(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    logger.log_hyperparams(
        {
            "db_password": "hunter2",
            "hf": {"token": "hf_abc"},
            "max_tokens": 512,
            "tokenizer": "bpe",
            "remote": "https://user:s3cret@example.com/repo.git",
        }
    )
    params = params_of(client, logger)
    assert params["db_password"] == "[redacted]"
    assert params["hf/token"] == "[redacted]"
    assert params["max_tokens"] == "512"
    assert params["tokenizer"] == "bpe"
    assert "s3cret" not in params["remote"] and params["remote"].endswith("example.com/repo.git")


def test_logging_the_same_values_again_is_a_no_op_and_a_change_never_crashes(
    tracking_uri, client, experiment_name, caplog
):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    model, data = TinyModel(lr=0.1), TinyData()
    make_trainer(logger, max_epochs=1).fit(model, data)

    resumed = MLflowLogger(tracking_uri=tracking_uri, run_id=logger.run_id)
    resumed.log_hyperparams({"lr": 0.1, "hidden": 4})
    with caplog.at_level(logging.WARNING):
        resumed.log_hyperparams({"lr": 0.5, "new_knob": 1})
        make_trainer(resumed, max_epochs=1).test(model, data)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1"  # MLflow params are write-once: the first value stays
    assert run.data.params["new_knob"] == "1"
    assert json.loads(run.data.tags["lightning_mlflow_ext.changed_params"]) == {"lr": "0.5"}
    assert sum("changed_params" in r.getMessage() for r in caplog.records) == 1


def test_tags_are_rendered_and_cleaned(tracking_uri, client, experiment_name):
    logger = MLflowLogger(
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        tags={"team": "vision", "epochs": 3, "source": "https://x:tok@example.com/a.git", "hf_token": "hf_x"},
    )
    tags = client.get_run(logger.run_id).data.tags
    assert tags["hf_token"] == "[redacted]"
    assert tags["team"] == "vision"
    assert tags["epochs"] == "3"
    assert "tok@" not in tags["source"]
