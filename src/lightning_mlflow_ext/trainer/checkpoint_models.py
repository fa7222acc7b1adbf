"""Checkpoints as MLflow 3 logged models: each mirrored checkpoint a logged model of the run, with the metrics of
its epoch linked to it (each carrying its split's dataset), and a pruned checkpoint's model deleted.

The training thread only notes which of the points it logged belong to each saved file; the model is made by the
run's delivery (``delivery.logged_models``), so one made while the store is unreachable arrives later, once.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.logged_models import LinkedPoint, model_details
from lightning_mlflow_ext.delivery.records import MetricPoint
from lightning_mlflow_ext.run.tags import (
    MODEL_CALLBACK_TAG,
    MODEL_CHECKPOINT_TAG,
    MODEL_EPOCH_TAG,
    MODEL_MONITOR_TAG,
    MODEL_SCORE_TAG,
    MODEL_STEP_TAG,
)
from lightning_mlflow_ext.values.axes import EPOCH_KEY

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession

#: The model type a checkpoint's logged model carries (the best model's is ``pytorch``: an MLflow Model).
CHECKPOINT_MODEL_TYPE = "lightning-checkpoint"

#: Which split's dataset a point logged in each of Lightning's running stages was computed on: the first of these
#: names the callback's ``datasets=`` uses.
_STAGE_SPLITS = {
    "train": ("train", "training"),
    "validate": ("val", "validation", "valid"),
    "test": ("test", "testing"),
}


def model_name(callback_key: str, global_step: int | None, *, last: bool) -> str:
    """``<callback key>-step-<global step>`` (``-last-`` for the callback's ``last.ckpt``), in the characters MLflow
    allows in a logged model's name."""
    name = f"{callback_key}-{'last-' if last else ''}step-{global_step if global_step is not None else 'unknown'}"
    return re.sub(r"[/:.%\"']", "_", name)


class CheckpointModels:
    """The logged models of one logger's checkpoints: the points each one links, and the change that made each."""

    def __init__(self, session: RunSession) -> None:
        self._session = session
        self._epoch: int | None = None
        self._epoch_points: dict[str, LinkedPoint] = {}  # key -> its latest point in the current epoch
        self._links: dict[str, list[LinkedPoint]] = {}  # real path of a saved file -> the points linked to it
        self._change_ids: dict[str, str] = {}  # local path of a mirrored file -> the change making its model
        self._datasets: dict[str, str] = {}  # split -> dataset digest (the run's input is named after the split)

    def note_datasets(self, digests: Mapping[str, str]) -> None:
        """The run's dataset inputs (split -> digest): a point logged in a split's stage carries that dataset."""
        self._datasets.update(digests)

    def note_points(self, points: list[MetricPoint], trainer: pl.Trainer | None) -> None:
        """Points just queued for the run: each key's latest point of the epoch is what a checkpoint saved in this
        epoch links. Runs on the training thread at every logging step: a dict update per point."""
        epoch = None if trainer is None else trainer.current_epoch
        if epoch != self._epoch:
            self._epoch, self._epoch_points = epoch, {}
        name, digest = self._dataset_of(trainer)
        latest = self._epoch_points
        for key, value, timestamp, step in points:
            on_data = key != EPOCH_KEY  # the epoch counter is computed on no dataset
            latest[key] = (key, value, timestamp, step, name if on_data else None, digest if on_data else None)

    def note_save(self, path: str) -> None:
        """A checkpoint was just written to ``path``: it links the points of the epoch logged so far."""
        self._links[os.path.realpath(path)] = list(self._epoch_points.values())

    def mirrored(
        self,
        path: str,
        snapshot: Path,
        artifact_path: str,
        metadata: Mapping[str, Any],
        *,
        last: bool,
        rewrite: Callable[[Path], Path] | None = None,
        skip: Callable[[Path], str | None] | None = None,
    ) -> None:
        """The checkpoint at ``path`` is being uploaded to ``artifact_path``: make its logged model too, from
        ``snapshot`` (a hard link of its own), with ``metadata`` (the mirror's: epoch, step, monitor, score).
        ``rewrite`` / ``skip``: the logger's ``log_model_options`` (a weights-only copy, the size limit), applied to
        the model's files as to the run's copy."""
        previous = self._change_ids.get(path)
        if previous is not None:  # the file was saved again (last.ckpt): its old model is out of date
            self._delete(previous, metadata)
        change_id = uuid.uuid4().hex
        step, epoch, score = metadata.get("global_step"), metadata.get("epoch"), metadata.get("score")
        tags = {
            MODEL_CHECKPOINT_TAG: artifact_path,
            MODEL_CALLBACK_TAG: str(metadata.get("callback")),
            MODEL_EPOCH_TAG: str(epoch),
            MODEL_STEP_TAG: str(step),
        }
        if metadata.get("monitor"):
            tags[MODEL_MONITOR_TAG] = str(metadata["monitor"])
        if score is not None:
            tags[MODEL_SCORE_TAG] = repr(float(score))
        details = model_details(
            change_id=change_id,
            experiment_id=self._session.experiment_id,
            name=model_name(str(metadata.get("callback")), step, last=last),
            tags=tags,
            params=self._session.logged_params(),
            model_type=CHECKPOINT_MODEL_TYPE,
            step=int(step) if step is not None else 0,
            metrics=self._links.get(os.path.realpath(path), []),
            checkpoint=True,
        )
        self._session.uploader.log_checkpoint_model(
            snapshot, artifact_path, metadata, details, rewrite=rewrite, skip=skip
        )
        self._change_ids[path] = change_id

    def forget(self, path: str, metadata: Mapping[str, Any]) -> None:
        """Lightning removed the checkpoint at ``path`` (top-k pruning): its logged model is deleted too."""
        change_id = self._change_ids.pop(path, None)
        self._links.pop(os.path.realpath(path), None)
        if change_id is not None:
            self._delete(change_id, metadata)

    def change_id_of(self, path: str) -> str | None:
        """The change making the logged model of the checkpoint at ``path`` (``run.models.logged_model_id`` gives
        its id once delivered): how the best checkpoint's logged model is found at the end of a fit."""
        return self._change_ids.get(path)

    def _delete(self, change_id: str, metadata: Mapping[str, Any]) -> None:
        self._session.uploader.delete_model(change_id, self._session.experiment_id, str(metadata.get("file")))

    def _dataset_of(self, trainer: pl.Trainer | None) -> tuple[str | None, str | None]:
        stage = None if trainer is None or trainer.state.stage is None else str(trainer.state.stage.value)
        for split in _STAGE_SPLITS.get(stage or "", ()):
            if split in self._datasets:
                return split, self._datasets[split]
        return None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_epoch_points"], state["_links"] = {}, {}  # a copy in another process notes its own
        return state
