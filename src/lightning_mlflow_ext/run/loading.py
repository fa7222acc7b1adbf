"""Getting a checkpoint back out of a run: by the run's best/latest tags, or by artifact path.

``load_checkpoint`` returns a local file; ``load_model`` goes on to ``load_from_checkpoint``.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from lightning_mlflow_ext.errors import LightningMLflowError, RunNotFoundError
from lightning_mlflow_ext.run.downloads import download_to_cache
from lightning_mlflow_ext.run.tags import (
    CHECKPOINT_TAG_PREFIX,
    CHECKPOINTS_ROOT,
    CHECKPOINTS_SKIPPED_TAG,
    parse_checkpoint_tag,
)
from lightning_mlflow_ext.run.tracking import refusals_explained, resolve_tracking_uri
from lightning_mlflow_ext.values.urls import strip_url_credentials

M = TypeVar("M")


def _run_id_of(run: str) -> str:
    return run.split("/")[1] if run.startswith("runs:/") else run


def _where_from(tracking_uri: str | None, uri: str) -> str:
    """How the store was chosen, for a message that says how to choose another."""
    if tracking_uri:
        return "given as tracking_uri="
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and resolve_tracking_uri(env) == uri:
        return "from MLFLOW_TRACKING_URI"
    return "MLflow's current tracking URI: mlflow.set_tracking_uri(), else the default ./mlflow.db"


def _get_run(client: MlflowClient, run_id: str, tracking_uri: str | None, uri: str) -> Run:
    """The run, or `RunNotFoundError` naming the store searched (without credentials) and how to pick another."""
    try:
        with refusals_explained(uri):
            return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise RunNotFoundError(
            f"No MLflow run with id {run_id!r} in the tracking store {strip_url_credentials(uri)} "
            f"({_where_from(tracking_uri, uri)}). If the run was tracked elsewhere, point at that store: "
            "load_checkpoint(..., tracking_uri='http://host:5000' or 'sqlite:///path/to/mlflow.db'), "
            "or set MLFLOW_TRACKING_URI."
        ) from None


def _monitors(fields: dict[str, str]) -> bool:
    # Runs recorded before the ``monitor`` tag existed: only a monitored callback has a best score.
    return "monitor" in fields or "best_score" in fields


def _describe(key: str, fields: dict[str, str]) -> str:
    return f"{key!r} (monitors {fields['monitor']})" if "monitor" in fields else repr(key)


def checkpoint_artifact_of(run: Run, which: str = "best", callback: str | None = None) -> str:
    """The artifact path of ``run``'s ``"best"`` or ``"latest"`` checkpoint (or ``which`` itself, a path).

    ``"best"`` is the best checkpoint of the one monitored ``ModelCheckpoint`` (periodic ones, which monitor
    nothing, are left out when a monitored one exists); several monitored callbacks need ``callback=``. A
    checkpoint the logger's ``log_model_options`` kept out of the run (``max_size``) raises, saying why.
    """
    artifact = _tagged_artifact(run, which, callback)
    for line in run.data.tags.get(CHECKPOINTS_SKIPPED_TAG, "").splitlines():
        path, _, why = line.partition(": ")
        if path == artifact:
            raise LightningMLflowError(
                f"Run {run.info.run_id}'s checkpoint {artifact} was not uploaded: {why}. "
                "It may still be on the training machine's disk."
            )
    return artifact


def _tagged_artifact(run: Run, which: str, callback: str | None) -> str:
    if which not in ("best", "latest"):
        return which
    run_id = run.info.run_id
    callbacks: dict[str, dict[str, str]] = {}
    for tag, value in run.data.tags.items():
        parsed = parse_checkpoint_tag(tag)
        if parsed is not None:
            callbacks.setdefault(parsed[0], {})[parsed[1]] = value
    found = {key: fields for key, fields in callbacks.items() if which in fields}
    if callback is not None:
        if callback not in found:
            raise LightningMLflowError(
                f"Run {run_id} has no {which!r} checkpoint of the callback {callback!r}; "
                f"its callbacks with one are {sorted(found)}."
            )
        return found[callback][which]
    if not found:
        raise LightningMLflowError(
            f"Run {run_id} has no {which!r} checkpoint recorded (no tag {CHECKPOINT_TAG_PREFIX}<callback>.{which}). "
            "Was it trained with MLflowLogger(log_model=True or 'all')? Pass an artifact path under "
            f"{CHECKPOINTS_ROOT}/ instead."
        )
    if which == "best":
        monitored = {key: fields for key, fields in found.items() if _monitors(fields)}
        found = monitored or found
    if len(found) > 1:
        kind = "monitored callbacks" if which == "best" and all(_monitors(f) for f in found.values()) else "callbacks"
        names = ", ".join(_describe(key, fields) for key, fields in sorted(found.items()))
        raise LightningMLflowError(
            f"Run {run_id} has a {which!r} checkpoint for several {kind}: {names}; "
            f"pass callback=<one of {sorted(found)}> to say which."
        )
    return next(iter(found.values()))[which]


def checkpoint_artifact(client: MlflowClient, run_id: str, which: str = "best", callback: str | None = None) -> str:
    """`checkpoint_artifact_of` the run ``run_id`` of ``client``'s store."""
    return checkpoint_artifact_of(client.get_run(run_id), which, callback)


def load_checkpoint(
    run: str,
    which: str = "best",
    *,
    callback: str | None = None,
    tracking_uri: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> str:
    """Download a checkpoint of ``run`` (a run id or ``runs:/<id>``) and return its local path.

    ``which`` is ``"best"`` (the best checkpoint of the monitored ``ModelCheckpoint``; ``callback=`` picks one
    when several monitor), ``"latest"``, or an artifact path such as ``"checkpoints/val_loss/epoch=3.ckpt"``.
    The run is looked up in ``tracking_uri``, else MLflow's tracking URI (``MLFLOW_TRACKING_URI``); a run that
    is not there raises `RunNotFoundError` naming the store searched.

    The file goes into ``dst_path`` when given; else into this package's cache folder, at
    ``<cache>/runs/<run id>/<artifact path>`` (``LIGHTNING_MLFLOW_CACHE_DIR``, else ``~/.cache/lightning-mlflow-ext``
    or the platform's cache folder), replaced by the next download of the same checkpoint. No temporary folder
    is left behind either way.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run_id = _run_id_of(run)
    artifact = checkpoint_artifact_of(_get_run(client, run_id, tracking_uri, uri), which, callback)
    if dst_path is None:
        return download_to_cache(client, run_id, artifact)
    os.makedirs(dst_path, exist_ok=True)
    return client.download_artifacts(run_id, artifact, str(dst_path))


def load_model(module_class: type[M], run: str, which: str = "best", **kwargs: Any) -> M:
    """``module_class.load_from_checkpoint`` on a checkpoint of ``run`` (see ``load_checkpoint``)."""
    options = {k: kwargs.pop(k) for k in ("callback", "tracking_uri", "dst_path") if k in kwargs}
    path = load_checkpoint(run, which, **options)
    return module_class.load_from_checkpoint(path, **kwargs)  # type: ignore[attr-defined, no-any-return]
