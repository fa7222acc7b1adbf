"""Figures, images, tables, text and files as artifacts of the run.

Each is rendered or snapshotted now, on the calling thread (so the caller may change or close what it passed),
and uploaded in the background; names are checked here, before anything is queued.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.uploader import snapshot
from lightning_mlflow_ext.run.tags import MLFLOW_LOGGED_IMAGES
from lightning_mlflow_ext.values.media import artifact_path, dict_text, figure_bytes, image_array, table_copy

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.session import RunSession


class MediaRecorder:
    """The bodies of ``MLflowLogger.log_figure`` ... ``log_artifact`` (the logger keeps them to rank 0)."""

    def __init__(self, session: RunSession) -> None:
        self._session = session
        self._images_tagged = False

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
        """A dict of columns or a pandas DataFrame, as MLflow's JSON table ``artifact_file``."""
        self._session.uploader.log_table(table_copy(data), artifact_path(artifact_file, what="table"))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._session.uploader.upload_text(str(text), artifact_path(artifact_file, what="text"))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        name = artifact_path(artifact_file, what="dict")
        self._session.uploader.upload_text(dict_text(data, name), name)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        folder = None if artifact_dir is None else artifact_path(artifact_dir, what="artifact folder")
        self._session.uploader.upload_snapshot(snapshot(local_path, self._session.uploader.staging), folder)
