"""Where an artifact downloaded without a ``dst_path`` goes: one folder per run and artifact path in a cache
folder this package owns, so that loading leaves no temporary folder behind.

The cache folder is ``LIGHTNING_MLFLOW_CACHE_DIR`` when set, else ``lightning-mlflow-ext`` in the user's
cache folder (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%``
on Windows). An artifact lands at ``<cache>/runs/<run id>/<artifact path>`` (a logged model's file at
``<cache>/models/<model id>/<file>``); downloading it again replaces
it (a checkpoint such as ``last.ckpt`` can change while its run goes on). Delete the folder to reclaim space.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient

from lightning_mlflow_ext.errors import InvalidArtifactPathError

__all__ = ["CACHE_DIR_ENV", "cache_dir", "download_model_file_to_cache", "download_to_cache"]

#: Overrides where downloads without ``dst_path`` go (e.g. a scratch disk on a cluster).
CACHE_DIR_ENV = "LIGHTNING_MLFLOW_CACHE_DIR"


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return Path(base)
    if sys.platform == "darwin":
        return Path(os.path.expanduser("~/Library/Caches"))
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))


def cache_dir() -> Path:
    """The folder downloads without ``dst_path`` go into (see the module's docstring)."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override).expanduser().absolute() if override else _user_cache_dir() / "lightning-mlflow-ext"


def _checked(artifact_path: str) -> str:
    normal = posixpath.normpath(artifact_path.replace("\\", "/"))
    if normal in (".", "") or normal.startswith("../") or normal == ".." or posixpath.isabs(normal):
        raise InvalidArtifactPathError(
            f"Artifact path {artifact_path!r} does not name a file inside the run: give it relative to the run's "
            "artifact root, e.g. 'checkpoints/val_loss/epoch=3.ckpt'."
        )
    return normal


def download_to_cache(client: MlflowClient, run_id: str, artifact_path: str) -> str:
    """Download ``artifact_path`` of ``run_id`` to ``<cache>/runs/<run id>/<artifact path>``; return that path.

    The download goes into a temporary folder inside the run's cache folder, which is removed afterwards, and
    is then moved into place in one step: an interrupted download leaves neither a half file at the returned
    path nor a stray folder.
    """
    relative = _checked(artifact_path)
    return _into_cache(
        cache_dir() / "runs" / run_id, relative, lambda tmp: client.download_artifacts(run_id, relative, tmp)
    )


def download_model_file_to_cache(download: Callable[[str, str], str], model_id: str, file: str) -> str:
    """Download ``file`` of the logged model ``model_id`` with ``download(file, folder)`` (its artifact
    repository's ``download_artifacts``) to ``<cache>/models/<model id>/<file>``; return that path."""
    relative = _checked(file)
    return _into_cache(cache_dir() / "models" / model_id, relative, lambda tmp: download(relative, tmp))


def _into_cache(folder: Path, relative: str, download: Callable[[str], str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / relative
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        local = Path(download(tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(local, target)
    return str(target)
