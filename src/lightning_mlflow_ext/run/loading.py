"""Getting a checkpoint back out of a run: by the run's best/latest tags, or by artifact path.

``load_checkpoint`` returns a local file; ``load_model`` goes on to ``load_from_checkpoint``.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from mlflow import MlflowClient

from lightning_mlflow_ext.errors import LightningMLflowError
from lightning_mlflow_ext.run.tags import CHECKPOINT_TAG_PREFIX, CHECKPOINTS_ROOT, parse_checkpoint_tag
from lightning_mlflow_ext.run.tracking import resolve_tracking_uri

M = TypeVar("M")


def _run_id_of(run: str) -> str:
    return run.split("/")[1] if run.startswith("runs:/") else run


def checkpoint_artifact(client: MlflowClient, run_id: str, which: str = "best", callback: str | None = None) -> str:
    """The artifact path of a run's ``"best"`` or ``"latest"`` checkpoint (or ``which`` itself, a path)."""
    if which not in ("best", "latest"):
        return which
    tags = client.get_run(run_id).data.tags
    parsed = ((parse_checkpoint_tag(key), value) for key, value in tags.items())
    found = {tag[0]: value for tag, value in parsed if tag is not None and tag[1] == which}
    if callback is not None:
        found = {k: v for k, v in found.items() if k == callback}
    if not found:
        raise LightningMLflowError(
            f"Run {run_id} has no {which!r} checkpoint recorded (no tag {CHECKPOINT_TAG_PREFIX}<callback>.{which}). "
            "Was it trained with MLflowLogger(log_model=True or 'all')? Pass an artifact path under "
            f"{CHECKPOINTS_ROOT}/ instead."
        )
    if len(found) > 1:
        raise LightningMLflowError(
            f"Run {run_id} has a {which!r} checkpoint for several callbacks {sorted(found)}; pass callback=..."
        )
    return next(iter(found.values()))


def load_checkpoint(
    run: str,
    which: str = "best",
    *,
    callback: str | None = None,
    tracking_uri: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> str:
    """Download a checkpoint of ``run`` (a run id or ``runs:/<id>``) and return its local path.

    ``which`` is ``"best"``, ``"latest"`` or an artifact path such as ``"checkpoints/val_loss/epoch=3.ckpt"``.
    """
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run_id = _run_id_of(run)
    artifact = checkpoint_artifact(client, run_id, which, callback)
    if dst_path is not None:
        os.makedirs(dst_path, exist_ok=True)
    return client.download_artifacts(run_id, artifact, None if dst_path is None else str(dst_path))


def load_model(module_class: type[M], run: str, which: str = "best", **kwargs: Any) -> M:
    """``module_class.load_from_checkpoint`` on a checkpoint of ``run`` (see ``load_checkpoint``)."""
    options = {k: kwargs.pop(k) for k in ("callback", "tracking_uri", "dst_path") if k in kwargs}
    path = load_checkpoint(run, which, **options)
    return module_class.load_from_checkpoint(path, **kwargs)  # type: ignore[attr-defined, no-any-return]
