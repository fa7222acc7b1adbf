"""Figures, images, tables, text and files as artifacts of the run.

Each is rendered or snapshotted now, on the calling thread (so the caller may change or close what it passed),
and uploaded in the background; names are checked here, before anything is queued.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.uploader import snapshot
from lightning_mlflow_ext.run.tags import MLFLOW_LOGGED_ARTIFACTS, MLFLOW_LOGGED_IMAGES
from lightning_mlflow_ext.values.media import Tables, artifact_path, dict_text, figure_bytes, image_array, write_table

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.session import RunSession


class MediaRecorder:
    """The bodies of ``MLflowLogger.log_figure`` ... ``log_artifact`` (the logger keeps them to rank 0)."""

    def __init__(self, session: RunSession) -> None:
        self._session = session
        self._images_tagged = False
        self._tables: Tables | None = None  # what log_table wrote, per file (MLflow appends rows)

    def forget_run(self) -> None:
        """A new run: its tags list no table and no image yet."""
        self._images_tagged = False
        self._tables = None

    def log_figure(self, figure: Any, key: str, step: int | None = None, *, close: bool = True) -> None:
        artifact_path(key, what="figure key")
        data, suffix = figure_bytes(figure, close=close)
        name = f"figures/{key}{suffix}" if step is None else f"figures/{key}/step_{int(step):06d}{suffix}"
        self._session.uploader.upload_bytes(data, name)

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        artifact_path(key, what="image key")
        pixels = image_array(image)
        if step is None:
            self._session.uploader.log_image(pixels, None, None, f"images/{key}.png")
        else:
            self._session.uploader.log_image(pixels, key, int(step), None)
            if not self._images_tagged:  # what MLflow's UI looks for to show the run's image grid
                self._session.set_tags({MLFLOW_LOGGED_IMAGES: "True"})
                self._images_tagged = True

    def log_table(self, data: Any, artifact_file: str) -> None:
        """A dict of columns or a pandas DataFrame, as MLflow's table ``artifact_file`` (.json or .parquet);
        logged again to the same file, the rows are appended, as ``mlflow.log_table`` does."""
        name = artifact_path(artifact_file, what="table")
        if self._tables is None:
            self._tables = Tables(self._session.initial_tags.get(MLFLOW_LOGGED_ARTIFACTS))
        frame, listed = self._tables.add(data, name)
        self._session.uploader.log_table(lambda path: write_table(frame, path), name)
        if listed is not None:
            self._session.set_tags({MLFLOW_LOGGED_ARTIFACTS: listed})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._session.uploader.upload_text(str(text), artifact_path(artifact_file, what="text"))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        name = artifact_path(artifact_file, what="dict")
        self._session.uploader.upload_text(dict_text(data, name), name)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        folder = None if artifact_dir is None else artifact_path(artifact_dir, what="artifact folder")
        self._session.uploader.upload_snapshot(snapshot(local_path, self._session.uploader.staging), folder)
