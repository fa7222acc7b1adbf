"""Logging a staged folder into a run as a logged model (an MLflow Model, optionally registered under an alias,
or a checkpoint with the metrics of its step linked to it): the ``model`` artifact change, made exactly once
however often it is replayed; and the ``delete_model`` change that removes one (a pruned checkpoint's).

A replay after a partial success (the model created, its files not all stored; the version created, the alias
not set) finds what was done by the change's own id, a tag on the logged model, and does only the rest.
A store without the logged-model API (an MLflow 2.x server) is said once; its model changes are then skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.entities.logged_model import LoggedModel
from mlflow.entities.logged_model_status import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault
from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)

#: On every logged model this package makes: the id of the change that made it (finds it again on a replay).
CHANGE_ID_TAG = "lightning_mlflow_ext.change_id"

#: A linked metric point: (key, value, timestamp in ms, step, dataset name or None, dataset digest or None).
LinkedPoint = tuple[str, float, int, int, "str | None", "str | None"]

#: Stores (by tracking URI) that answered that they have no logged-model API: said once, then skipped.
NO_LOGGED_MODELS_WARNING = (
    "The MLflow tracking store at {} has no logged-model API (an MLflow 2.x server?): checkpoints stay plain "
    "artifacts of the run (checkpoints/<callback>/), and no logged models are made. Upgrade the server to "
    "MLflow 3 to see checkpoints with their scores as the run's logged models."
)


#: Stores that refused a point sent again to link it to a model (said once; the models are made without scores).
NO_METRIC_LINKS_WARNING = (
    "The MLflow tracking store at {} refused metric points sent again to link them to a logged model ({}): "
    "checkpoints' logged models are made without their scores. The run's metrics are not affected. MLflow 3.17 "
    "links them; upgrade the tracking server/store to see each checkpoint's scores."
)


def model_details(
    *,
    change_id: str,
    experiment_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    model_type: str,
    run_tag: str | None = None,
    registered_model_name: str | None = None,
    alias: str | None = None,
    step: int = 0,
    metrics: list[LinkedPoint] | None = None,
    checkpoint: bool = False,
) -> dict[str, Any]:
    """What a ``model`` change carries. ``run_tag``: a run tag to set to the new model's id. ``step``: the step
    the run's output link names. ``metrics``: points of the run linked to the model (with their own timestamps,
    so that the run keeps one point each). ``checkpoint``: the folder holds a checkpoint, not an MLflow Model."""
    return {
        "change_id": change_id,
        "experiment_id": experiment_id,
        "name": name,
        "tags": dict(tags),
        "params": dict(params),
        "model_type": model_type,
        "run_tag": run_tag,
        "registered_model_name": registered_model_name,
        "alias": alias,
        "step": step,
        "metrics": [list(point) for point in metrics or []],
        "checkpoint": checkpoint,
    }


def as_checkpoint_model(details: Mapping[str, Any], checkpoint_change_id: str) -> dict[str, Any]:
    """``details`` of an MLflow Model (the best model) made into an addition to the logged model a checkpoint's
    change ``checkpoint_change_id`` made: its files are stored into that model, its tags added, and that model
    is the one registered. If that model was never made (a store without logged models), one is created. Its
    metrics are the checkpoint's own (linked with their datasets when it was made): none are linked again."""
    return {**details, "change_id": checkpoint_change_id, "extends_checkpoint": True, "metrics": []}


#: Per process, what each store said it cannot do (``"models <uri>"``, ``"links <uri>"``): said once, then skipped.
_STORE_LIMITS = WarnOnce(log)


def without_logged_models(tracking_uri: str) -> bool:
    """Whether ``tracking_uri``'s store already said it has no logged-model API (this process skips them)."""
    return _STORE_LIMITS.seen(f"models {tracking_uri}")


def lacks_logged_models(client: MlflowClient, exc: BaseException) -> bool:
    """Whether ``exc`` says the store has no logged-model API; if so, say it once (the first time) per store."""
    missing = isinstance(exc, NotImplementedError) or (
        isinstance(exc, MlflowException) and exc.error_code == "ENDPOINT_NOT_FOUND"
    )
    uri = str(client.tracking_uri)
    if missing:
        _STORE_LIMITS(f"models {uri}", NO_LOGGED_MODELS_WARNING.format(uri))
    return missing


def log_staged_model(client: MlflowClient, run_id: str, folder: Path, details: Mapping[str, Any]) -> LoggedModel:
    """Make the logged model of ``folder`` (an MLflow Model saved on disk, or a checkpoint and its metadata) in
    the run, register it, return it.

    In this order, so that every step a replay repeats is harmless: the model (PENDING) found by its change id
    or created; the metrics linked to it; the model among the run's outputs; its files stored; READY.
    """
    if details.get("checkpoint"):
        complete = folder.is_dir() and any(folder.iterdir())
    else:
        complete = (folder / "MLmodel").is_file()
    if not complete:
        raise DeliveryError(f"the staged model {folder} is gone (stored already, or removed)", Fault.ONE_RECORD)
    model = _find_or_create(client, run_id, details)
    _link_metrics(client, run_id, model.model_id, details.get("metrics") or [])
    _link_to_run(client, run_id, model.model_id, int(details.get("step") or 0))
    if details.get("extends_checkpoint"):  # the best model's files into its checkpoint's model: add, then READY
        tags = {k: str(v) for k, v in details.get("tags", {}).items() if model.tags.get(k) != str(v)}
        if tags:
            client.set_logged_model_tags(model.model_id, tags)
        _store_files(client, model, folder)
        if model.status != LoggedModelStatus.READY:
            model = client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    elif model.status != LoggedModelStatus.READY:
        try:
            _store_files(client, model, folder)
        except Exception:
            _mark_failed_quietly(client, model.model_id)
            raise
        model = client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    if details.get("run_tag"):
        client.set_tag(run_id, str(details["run_tag"]), model.model_id)
    name = details.get("registered_model_name")
    if name:
        _register(client, run_id, model, str(name), details.get("alias"))
    return model


def _store_files(client: MlflowClient, model: LoggedModel, folder: Path) -> None:
    """``client.log_model_artifacts``, with the model's ``mlflow-artifacts:`` location resolved against the
    client's store: older MLflow 3 releases (3.2 among them) resolve it against the process's tracking URI,
    which need not be this run's store."""
    uri = client.tracking_uri
    location = add_databricks_profile_info_to_artifact_uri(model.artifact_location, uri)  # type: ignore[no-untyped-call]
    get_artifact_repository(location, tracking_uri=uri).log_artifacts(str(folder))  # type: ignore[no-untyped-call]


def find_logged_model(client: MlflowClient, experiment_id: str, change_id: str) -> LoggedModel | None:
    """The logged model the ``model`` change ``change_id`` made, once it is made."""
    found = client.search_logged_models(
        [experiment_id], filter_string=f"tags.`{CHANGE_ID_TAG}` = '{change_id}'", max_results=1
    )
    return found[0] if found else None


def _find_or_create(client: MlflowClient, run_id: str, details: Mapping[str, Any]) -> LoggedModel:
    experiment_id = str(details["experiment_id"])
    change_id = str(details["change_id"])
    found = find_logged_model(client, experiment_id, change_id)
    if found is not None:
        return found
    return client.create_logged_model(
        experiment_id,
        name=str(details["name"]),
        source_run_id=run_id,
        tags={**details.get("tags", {}), CHANGE_ID_TAG: change_id},
        params=dict(details.get("params", {})),
        model_type=str(details.get("model_type") or "") or None,
    )


def delete_logged_model(client: MlflowClient, experiment_id: str, change_id: str) -> None:
    """Remove the logged model the ``model`` change ``change_id`` made (a pruned checkpoint's); nothing if it
    was never made or is removed already."""
    found = find_logged_model(client, experiment_id, change_id)
    if found is not None:
        client.delete_logged_model(found.model_id)


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, points: list[Any]) -> None:
    """The run's points of the model's step, sent again with the model's id (and their dataset): MLflow links
    them to the model, and keeps one point each in the run (same key, value, step and timestamp)."""
    if points:
        metrics = [
            Metric(str(k), float(v), int(ts), int(step), model_id=model_id, dataset_name=name, dataset_digest=digest)
            for k, v, ts, step, name, digest in points
        ]
        try:
            client.log_batch(run_id, metrics=metrics, synchronous=True)
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc):
                raise
            # Older MLflow SQL stores (3.2 among them) fail on a point the run holds already in some batches,
            # instead of keeping it once: the model is made without its scores, said once per store.
            uri = str(client.tracking_uri)
            _STORE_LIMITS(f"links {uri}", NO_METRIC_LINKS_WARNING.format(uri, exc))


def _link_to_run(client: MlflowClient, run_id: str, model_id: str, step: int) -> None:
    """The model among the run's outputs (``run.outputs.model_outputs``), as ``mlflow.<flavor>.log_model`` links
    it; looked up first, since MLflow stores every call as one more link."""
    outputs = client.get_run(run_id).outputs
    if not any(output.model_id == model_id for output in (outputs.model_outputs if outputs else [])):
        client.log_outputs(run_id, [LoggedModelOutput(model_id=model_id, step=step)])


def _register(client: MlflowClient, run_id: str, model: LoggedModel, name: str, alias: object) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    # Searched versions carry neither model_id nor aliases on every store: the source is the model's own.
    version = next((v for v in existing if v.source == model.artifact_location), None)
    if version is None:
        # The model's own artifact location, not "models:/<id>": MLflow resolves that one through the global
        # tracking URI, which need not be this run's store.
        version = client.create_model_version(
            name, source=model.artifact_location, run_id=run_id, model_id=model.model_id
        )
    if alias:
        client.set_registered_model_alias(name, str(alias), str(version.version))


def _mark_failed_quietly(client: MlflowClient, model_id: str) -> None:
    """A model whose files did not all arrive is FAILED until a replay stores them and makes it READY."""
    try:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    except Exception as exc:  # the store is gone too: the replay finds the model PENDING, which is as good
        log.debug("could not mark logged model %s FAILED: %s", model_id, exc)
