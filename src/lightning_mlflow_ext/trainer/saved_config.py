"""The config file Lightning's own ``SaveConfigCallback`` writes, moved into the run's folder and recorded.

LightningCLI's default callback writes the resolved config to ``Trainer.log_dir``, which for a logger other
than TensorBoard/CSV is the logger's ``save_dir``, and refuses to start when the file is already there. One
``save_dir`` serves every run (the journal and the staged uploads live there), so the logger moves the file
into the run's own folder (``log_dir``, next to its checkpoints) once it is written: the next run finds no
file in its way. The file is also uploaded as the run's artifact, with the secrets removed that the logger
keeps out of params.

A file the CLI read its config from (``--config``, with ``overwrite=True`` and that folder as ``save_dir``) is
copied instead: the user's file stays where it is.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lightning_mlflow_ext.values.config_file import redacted_yaml

if TYPE_CHECKING:
    from lightning_mlflow_ext.trainer.media import MediaRecorder
    from lightning_mlflow_ext.values.redaction import Redactor
    from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)


class SavedConfig:
    """Takes the config file out of ``save_dir`` once a stage, into the run's folder and the run's artifacts."""

    def __init__(self, media: MediaRecorder, redactor: Redactor, warn_once: WarnOnce, save_dir: str) -> None:
        self._media = media
        self._redactor = redactor
        self._warn_once = warn_once
        self._save_dir = save_dir
        self._taken = False

    def new_stage(self) -> None:
        self._taken = False

    def take(self, filename: str, inputs: Sequence[str], run_dir: Callable[[], str]) -> str | None:
        """Move (or for a file in ``inputs``, copy) ``save_dir/filename`` to ``run_dir()/filename`` and record
        it; return where it went, None when there was no such file or it was taken already in this stage."""
        source = os.path.join(self._save_dir, filename)
        if self._taken or not os.path.isfile(source):
            return None
        target = os.path.join(run_dir(), filename)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.realpath(source) in {os.path.realpath(path) for path in inputs}:
            shutil.copyfile(source, target)
        else:
            os.replace(source, target)
        self._taken = True
        try:
            text, _ = redacted_yaml(Path(target).read_text(encoding="utf-8"), self._redactor)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self._warn_once("saved-config", f"The config {target} is not recorded in the run: {exc}")
            return target
        self._media.log_text(text, filename.replace(os.sep, "/"))
        return target
