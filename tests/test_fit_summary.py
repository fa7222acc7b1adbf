"""How a fit went, as metrics the runs table sorts: best/<monitor> (and the epoch, step and seconds it was reached
at), fit/epochs, fit/global_step, fit/wall_time_s, fit/samples, fit/samples_per_s, fit/steps_per_s; written as
the fit goes, so a failed run has them too; continued by a resumed fit. Real fits, one SQLite store for the
module; checked through MlflowClient."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowCallback, MLflowLogger
from lightning_mlflow_ext.trainer.fit_summary import batch_size

#: ``train_acc`` of each epoch, logged in ``on_train_epoch_end`` (after the callbacks' own hook of that name).
TRAIN_ACC = [0.5, 0.875, 0.75]
BATCHES = 2  # 16 samples, batches of 8
EXPERIMENT = "fit-summary"


class ScoredModel(TinyModel):
    def on_train_epoch_end(self) -> None:
        self.log("train_acc", TRAIN_ACC[self.current_epoch])


def callbacks(folder: Path) -> list[object]:
    return [
        ModelCheckpoint(dirpath=folder, monitor="val_loss", mode="min"),
        EarlyStopping(monitor="train_acc", mode="max", patience=10),
    ]


@dataclass
class Fits:
    uri: str
    full: str  # 3 epochs, logger=MLflowLogger(...)
    failed: str  # raises in its 4th training step (epoch 1), MLflowCallback alone


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded SQLite store for the module: creating one takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(scope="module")
def fits(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fits]:
    folder = tmp_path_factory.mktemp("fits")
    uri = store
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        logger = MLflowLogger(experiment_name=EXPERIMENT, tracking_uri=uri)
        trainer = make_trainer(logger, max_epochs=3, enable_checkpointing=True, callbacks=callbacks(folder / "a"))
        trainer.fit(ScoredModel(), TinyData(n_train=16))

        callback = MLflowCallback(logger_options={"experiment_name": EXPERIMENT, "tracking_uri": uri})
        trainer = make_trainer(
            False, max_epochs=3, enable_checkpointing=True, callbacks=[callback, *callbacks(folder / "b")]
        )
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit(ScoredModel(fail_at_step=3), TinyData(n_train=16))
        assert callback._own_logger is not None
        yield Fits(uri, logger.run_id, callback._own_logger.run_id)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_best_scores_are_the_best_points_of_their_metric_and_say_when(fits: Fits) -> None:
    client = MlflowClient(fits.uri)
    metrics = client.get_run(fits.full).data.metrics

    val_loss = history(client, fits.full, "val_loss")  # step = epoch
    best_epoch, best_loss = min(val_loss, key=lambda point: point[1])
    assert metrics["best/val_loss"] == best_loss
    assert metrics["best_epoch/val_loss"] == best_epoch
    assert metrics["best_step/val_loss"] == (best_epoch + 1) * BATCHES

    train_acc = history(client, fits.full, "train_acc")
    assert max(value for _, value in train_acc) == metrics["best/train_acc"] == pytest.approx(0.875)
    assert metrics["best_epoch/train_acc"] == 1
    assert metrics["best_step/train_acc"] == 4
    # Reached at the end of epoch 1: no later than the wall time recorded then.
    wall_time = dict(history(client, fits.full, "fit/wall_time_s"))
    assert 0 < metrics["best_time_s/train_acc"] <= wall_time[4] < metrics["fit/wall_time_s"]


def test_fit_totals_and_rates_are_recorded_after_every_epoch(fits: Fits) -> None:
    client = MlflowClient(fits.uri)
    metrics = client.get_run(fits.full).data.metrics
    assert metrics["fit/epochs"] == 3
    assert metrics["fit/global_step"] == 6
    assert metrics["fit/samples"] == 48
    seconds = metrics["fit/wall_time_s"]
    assert seconds > 0
    assert metrics["fit/samples_per_s"] == pytest.approx(48 / seconds)
    assert metrics["fit/steps_per_s"] == pytest.approx(6 / seconds)
    assert history(client, fits.full, "fit/epochs") == [(2, 1.0), (4, 2.0), (6, 3.0)]
    for key in metrics:
        if key.startswith(("best", "fit/")):
            steps = [step for step, _ in history(client, fits.full, key)]
            assert not [s for s, n in collections.Counter(steps).items() if n > 1], key


def test_a_failed_fit_already_has_the_summary_of_its_first_epoch(fits: Fits) -> None:
    client = MlflowClient(fits.uri)
    run = client.get_run(fits.failed)
    assert run.info.status == "FAILED"
    # Recorded when epoch 0 ended (step 2), and once more when the fit failed (step 3).
    assert [step for step, _ in history(client, fits.failed, "fit/global_step")] == [2, 3]
    ((_, loss),) = history(client, fits.failed, "val_loss")
    assert history(client, fits.failed, "best/val_loss")[0] == (2, loss)
    assert run.data.metrics["best_epoch/val_loss"] == 0
    assert run.data.metrics["best/train_acc"] == pytest.approx(TRAIN_ACC[0])
    assert run.data.metrics["fit/epochs"] == 1


def test_runs_sort_by_their_best_score(fits: Fits) -> None:
    client = MlflowClient(fits.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    best = {run_id: client.get_run(run_id).data.metrics["best/val_loss"] for run_id in (fits.full, fits.failed)}
    assert best[fits.full] != best[fits.failed]
    for order, reverse in (("ASC", False), ("DESC", True)):
        runs = client.search_runs([experiment.experiment_id], order_by=[f"metrics.`best/val_loss` {order}"])
        assert [run.info.run_id for run in runs] == sorted(best, key=best.__getitem__, reverse=reverse)


def test_a_resumed_fit_keeps_the_best_score_of_the_epochs_before(store: str, tmp_path: Path) -> None:
    class Worse(ScoredModel):  # the epoch after the resume scores lower than the one before it
        def on_train_epoch_end(self) -> None:
            self.log("train_acc", [0.875, 0.5][self.current_epoch])

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_acc", mode="max", save_last=True)
    logger = MLflowLogger(experiment_name="fit-summary-resume", tracking_uri=store)
    trainer = make_trainer(logger, max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(Worse(), TinyData(n_train=16))

    resumed = MLflowLogger(experiment_name="fit-summary-resume", tracking_uri=store)
    trainer = make_trainer(resumed, max_epochs=2, enable_checkpointing=True, callbacks=[ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="train_acc", mode="max", save_last=True)])
    trainer.fit(Worse(), TinyData(n_train=16), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    assert resumed.run_id == logger.run_id  # the checkpoint's run continues
    client = MlflowClient(store)
    metrics = client.get_run(logger.run_id).data.metrics
    assert metrics["best/train_acc"] == pytest.approx(0.875)
    assert metrics["best_epoch/train_acc"] == 0
    assert metrics["best_step/train_acc"] == 2
    assert metrics["fit/epochs"] == 2
    assert metrics["fit/global_step"] == 4
    assert metrics["fit/samples"] == 32  # both fits' samples
    wall_time = dict(history(client, logger.run_id, "fit/wall_time_s"))
    assert metrics["fit/wall_time_s"] > wall_time[2] >= metrics["best_time_s/train_acc"] > 0  # both fits' time


def test_samples_are_counted_from_the_leading_dimension_of_a_batch() -> None:
    x, y = torch.zeros(8, 3), torch.zeros(8)
    assert batch_size(x) == batch_size((x, y)) == batch_size([x]) == batch_size({"x": x, "y": y}) == 8
    # Else the DataLoader's batch_size is counted (None when it has none: no samples metrics then).
    assert batch_size(["a", "b"]) is batch_size(torch.tensor(1.0)) is batch_size([]) is None
