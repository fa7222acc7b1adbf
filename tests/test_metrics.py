"""Metric points as a user reads them back: names, values, and the step each one is recorded at."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger

# TinyData: 64 training samples in batches of 8 -> 8 optimizer steps an epoch.
STEPS_PER_EPOCH = 8


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((point.step, point.value) for point in client.get_metric_history(run_id, key))


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [step for step, _ in history(client, run_id, key)]


def test_epoch_level_metrics_are_recorded_at_step_equal_epoch(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=3)
    model, data = TinyModel(), TinyData()
    trainer.fit(model, data)
    trainer.test(model, data)
    run_id = logger.run_id

    assert steps(client, run_id, "val_loss") == [0, 1, 2]
    assert steps(client, run_id, "train_loss_epoch") == [0, 1, 2]
    assert steps(client, run_id, "train_loss_step") == list(range(3 * STEPS_PER_EPOCH))
    assert steps(client, run_id, "train_mse") == list(range(3 * STEPS_PER_EPOCH))
    assert steps(client, run_id, "test_loss") == [3]  # after 3 epochs, current_epoch is 3
    epoch_points = history(client, run_id, "epoch")
    assert len(epoch_points) == len({step for step, _ in epoch_points}), "epoch stored twice at one step"
    assert {value for _, value in epoch_points} == {0.0, 1.0, 2.0, 3.0}
    tags = client.get_run(run_id).data.tags
    assert tags["lightning_mlflow_ext.step_axis"] == "epoch"
    assert set(tags["lightning_mlflow_ext.epoch_axis_keys"].split(",")) >= {
        "val_loss",
        "train_loss_epoch",
        "test_loss",
    }


def test_global_step_axis_gives_lightnings_behaviour(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, step_axis="global_step")
    make_trainer(logger, max_epochs=2).fit(TinyModel(), TinyData())
    # Lightning records epoch-level points at the last optimizer step of the epoch.
    assert steps(client, logger.run_id, "val_loss") == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]
    assert steps(client, logger.run_id, "train_loss_epoch") == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]
    assert client.get_run(logger.run_id).data.tags["lightning_mlflow_ext.step_axis"] == "global_step"


def test_validation_twice_an_epoch_falls_back_to_the_global_step(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    make_trainer(logger, max_epochs=2, val_check_interval=0.5).fit(TinyModel(), TinyData())
    val_steps = steps(client, logger.run_id, "val_loss")
    assert len(val_steps) == 4
    assert len(set(val_steps)) == 4, f"two validation points share a step: {val_steps}"
    assert steps(client, logger.run_id, "train_loss_epoch") == [0, 1]


def test_values_names_and_steps_of_direct_calls(tracking_uri, client, experiment_name, caplog):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, prefix="fold1")
    with caplog.at_level(logging.WARNING):
        logger.log_metrics({"loss": torch.tensor(0.5), "acc@top-1": 0.9, "acc_top-1": 0.8}, step=3)
        logger.log_metrics({"loss": 0.25, "note": "text", "acc@top-1": 0.95}, step=4)
        logger.log_metrics({"note": "again"}, step=5)
        logger.log_metrics({"auto": 1.0})
        logger.log_metrics({"auto": 2.0})
    assert logger.flush() == 0
    run_id = logger.run_id

    assert history(client, run_id, "fold1-loss") == [(3, 0.5), (4, 0.25)]
    # Two different keys never collapse into one name.
    renamed = history(client, run_id, "fold1-acc_top-1")
    assert renamed in ([(3, 0.9), (4, 0.95)], [(3, 0.8)])
    metrics = client.get_run(run_id).data.metrics
    valid_names = [name for name in metrics if name.startswith("fold1-acc")]
    assert len(valid_names) == 2
    assert sorted(len(history(client, run_id, name)) for name in valid_names) == [1, 2]
    # step=None is not step 0: each call gets the next step of that key.
    assert history(client, run_id, "fold1-auto") == [(0, 1.0), (1, 2.0)]
    assert "fold1-note" not in metrics
    non_numeric = [r for r in caplog.records if "non-numeric" in r.getMessage()]
    assert len(non_numeric) == 1 and "note" in non_numeric[0].getMessage()
    assert any("acc@top-1" in r.getMessage() and "not a valid MLflow name" in r.getMessage() for r in caplog.records)


def test_non_finite_values_keep_their_meaning_on_every_store(tracking_uri, client, experiment_name, caplog):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    with caplog.at_level(logging.WARNING):
        logger.log_metrics({"nan": float("nan"), "pos": float("inf"), "neg": float("-inf")}, step=0)
        logger.log_metrics({"neg": float("-inf")}, step=1)
    logger.flush()
    run_id = logger.run_id
    assert math.isnan(history(client, run_id, "nan")[0][1])
    assert history(client, run_id, "pos") == [(0, 1.7976931348623157e308)]
    assert history(client, run_id, "neg") == [(0, -1.7976931348623157e308), (1, -1.7976931348623157e308)]
    assert sum("'neg' is -inf" in r.getMessage() for r in caplog.records) == 1


def test_synchronous_mode_writes_before_returning(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, synchronous=True)
    logger.log_metrics({"x": 1.0}, step=0)
    assert history(client, logger.run_id, "x") == [(0, 1.0)]


@pytest.mark.parametrize("bad", [{"step_axis": "epochs"}, {"log_model": "best"}])
def test_bad_arguments_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MLflowLogger(**bad)


def test_sanity_check_does_not_move_step_metrics_to_the_epoch_axis(tracking_uri, client, experiment_name):
    from lightning.pytorch.callbacks import LearningRateMonitor

    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, num_sanity_val_steps=2, callbacks=[LearningRateMonitor(logging_interval="step")])
    trainer.fit(TinyModel(), TinyData())
    assert steps(client, logger.run_id, "lr-SGD") == list(range(2 * STEPS_PER_EPOCH))
    assert steps(client, logger.run_id, "val_loss") == [0, 1]


class Stream(torch.utils.data.IterableDataset):
    """A stream of unknown length, as from a data loader over a bucket."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(64):
            yield torch.randn(8, generator=generator), torch.randn(1, generator=generator)


def test_streaming_data_validated_every_n_batches_keeps_one_point_per_step(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    data = TinyData()
    data.setup("fit")
    train = torch.utils.data.DataLoader(Stream(), batch_size=8)
    make_trainer(logger, max_epochs=1, val_check_interval=3).fit(TinyModel(), train, data.val_dataloader())
    val_steps = steps(client, logger.run_id, "val_loss")
    assert len(val_steps) == 2 and len(set(val_steps)) == 2, val_steps


def test_prefix_keeps_one_epoch_point_per_step(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, prefix="fold1")
    make_trainer(logger).fit(TinyModel(), TinyData())
    epoch_steps = steps(client, logger.run_id, "fold1-epoch")
    assert len(epoch_steps) == len(set(epoch_steps))
    assert steps(client, logger.run_id, "fold1-val_loss") == [0, 1]


def test_testing_twice_at_one_epoch_keeps_both_points_and_says_so(tracking_uri, client, experiment_name, caplog):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger)
    model, data = TinyModel(), TinyData()
    trainer.fit(model, data)
    with caplog.at_level(logging.WARNING):
        trainer.test(model, data)
        trainer.test(model, data)
    assert steps(client, logger.run_id, "test_loss") == [2, 2]
    assert sum("second point at an epoch" in r.getMessage() for r in caplog.records) == 1
