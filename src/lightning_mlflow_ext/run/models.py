"""MLflow Models of a run: the best checkpoint's (``best``, optionally registered as ``@best``) and the trained
model ``mlflow.pytorch.autolog()`` logs (``model``), in the run's own experiment.

Saved here, on disk; logged and registered by the run's delivery (``delivery.logged_models``), so a model made
while the store is unreachable arrives with ``lightning-mlflow sync`` like every other write.
``mlflow.pytorch.log_model`` is not used: it reads the global tracking URI and experiment.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import uuid
from collections.abc import Sequence
from importlib.metadata import version
from types import ModuleType
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lightning_mlflow_ext.delivery.logged_models import find_logged_model, model_details
from lightning_mlflow_ext.delivery.records import MetricPoint
from lightning_mlflow_ext.run.tags import (
    BEST_MODEL_ID_TAG,
    MODEL_CHECKPOINT_TAG,
    MODEL_SERIALIZATION_TAG,
    MODEL_STEP_TAG,
)

BEST_ALIAS = "best"
log = logging.getLogger(__name__)


def mlflow_pytorch() -> ModuleType:
    """``mlflow.pytorch``, imported without the side effect of its Lightning autolog module: that calls
    ``logging.basicConfig(level=ERROR)`` at import, which silences every warning of the process (ours too)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return importlib.import_module("mlflow.pytorch")
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _requirements() -> list[str]:
    # Given explicitly: inferring them runs the model in a subprocess, slow and fragile at the end of a fit.
    return [f"{package}=={version(package)}" for package in ("torch", "lightning", "mlflow")]


#: How this package stores a model's module: the whole pickled ``nn.Module`` (``torch.save``), loaded back with
#: ``mlflow.pytorch.load_model`` as the class it was. Not MLflow 3's ``"pt2"`` default (``torch.export``): that
#: needs a module ``torch.export`` can trace and a tensor input example, which many Lightning modules are not.
SERIALIZATION_FORMAT = "pickle"


def save_pickled(module: Any, folder: str | os.PathLike[str], **options: Any) -> None:
    """``mlflow.pytorch.save_model`` of the whole pickled module, on every supported MLflow: before 3.11 pickle is
    its only format and it takes no ``serialization_format``."""
    pytorch = mlflow_pytorch()
    if "serialization_format" in inspect.signature(pytorch.save_model).parameters:
        options["serialization_format"] = SERIALIZATION_FORMAT
    pytorch.save_model(module, str(folder), **options)


def save_best_model(
    module: Any,
    folder: str | os.PathLike[str],
    *,
    experiment_id: str,
    checkpoint_artifact: str,
    step: int,
    metrics: Sequence[MetricPoint] = (),
    example: tuple[Any, Any] | None = None,
    signature: bool = True,
    input_example: bool = True,
    registered_model_name: str | None = None,
) -> dict[str, Any]:
    """Save ``module`` (already loaded from the best checkpoint) as the logged model ``best`` of the run's
    experiment (``save_trained_model``), tagged with its checkpoint, its id in the run's ``best_model_id`` tag,
    its scores (``metrics``, points of the run) linked to it, and registered as ``<registered_model_name>@best``
    when a name is given."""
    return save_trained_model(
        module,
        folder,
        experiment_id=experiment_id,
        name="best",
        example=example,
        signature=signature,
        input_example=input_example,
        tags={MODEL_CHECKPOINT_TAG: checkpoint_artifact, MODEL_STEP_TAG: str(step)},
        metrics=metrics,
        run_tag=BEST_MODEL_ID_TAG,
        registered_model_name=registered_model_name,
        alias=BEST_ALIAS if registered_model_name else None,
    )


def save_trained_model(
    module: Any,
    folder: str | os.PathLike[str],
    *,
    experiment_id: str,
    name: str,
    example: tuple[Any, Any] | None = None,
    signature: bool = True,
    input_example: bool = False,
    registered_model_name: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    metrics: Sequence[MetricPoint] = (),
    run_tag: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Save ``module`` as it is now as an MLflow Model in ``folder`` and return what the ``model`` change that
    logs it as ``name`` carries (``delivery.logged_models``).

    ``example``, a first ``(input, output)`` pair of tensors, gives the model its signature (as
    ``mlflow.pytorch.autolog()`` logs the trained model; ``signature=False``: none) and, with
    ``input_example=True``, its input example. ``metrics``: points of the run to link to the model."""
    save_pickled(
        module,
        folder,
        pip_requirements=_requirements(),
        signature=_signature(example) if signature else False,  # False: MLflow infers none from the example
        input_example=_input_example(example) if input_example else None,
    )
    return model_details(
        change_id=uuid.uuid4().hex,
        experiment_id=experiment_id,
        name=name,
        tags={**(tags or {}), MODEL_SERIALIZATION_TAG: SERIALIZATION_FORMAT},
        params=params or {},
        model_type="pytorch",
        run_tag=run_tag,
        registered_model_name=registered_model_name,
        alias=alias,
        metrics=[(*point, None, None) for point in metrics],  # the model's scores: linked without a dataset
    )


def logged_model_id(client: MlflowClient, experiment_id: str, change_id: str) -> str | None:
    """The id of the logged model a ``model`` change made; None while it is not made (the store is unreachable)."""
    try:
        found = find_logged_model(client, experiment_id, change_id)
    except MlflowException as exc:
        log.debug("could not look up the logged model of change %s: %s", change_id, exc)
        return None
    return None if found is None else str(found.model_id)


def _signature(example: tuple[Any, Any] | None) -> Any:
    """The model signature of one ``(input, output)`` pair of tensors, as MLflow's autolog infers it."""
    if example is None:
        return None
    from mlflow.models import infer_signature

    try:
        return infer_signature(example[0].cpu().numpy(), example[1].detach().cpu().numpy())
    except Exception as exc:  # an input MLflow cannot describe: the model is logged without a signature
        log.warning("Could not infer the model signature (%s); the model is logged without one.", exc)
        return None


def _input_example(example: tuple[Any, Any] | None) -> Any:
    """The input of ``example`` as the array MLflow saves as the model's input example."""
    if example is None:
        return None
    try:
        return example[0].detach().cpu().numpy()
    except Exception as exc:  # a dtype numpy has not (bfloat16): the model is logged without an input example
        log.info("The model's input example cannot be saved (%s); the model is logged without one.", exc)
        return None
