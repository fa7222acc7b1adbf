"""``autolog()``: every Trainer created afterwards records into MLflow, with no other change to the script.

Lightning adds the callbacks of the ``lightning.pytorch.callbacks_factory`` entry point to every Trainer it
creates (``pytorch_lightning.callbacks_factory`` for a ``pytorch_lightning.Trainer``); this package's entry point
in both groups is ``callbacks_factory`` below (its callbacks suit either namespace: see ``namespaces``). It always
adds the bridge, and with autolog on an ``MLflowCallback`` that finds the Trainer's ``MLflowLogger`` or adds one
of its own.
For scripts that cannot be edited: ``LIGHTNING_MLFLOW_AUTOLOG=1``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlflow_ext.trainer.bridge import MLflowTrainerBridge
from lightning_mlflow_ext.trainer.callback import MLflowCallback
from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.trainer.summaries import trainer_callbacks

ENV_VAR = "LIGHTNING_MLFLOW_AUTOLOG"
_CALLBACK_OPTIONS = {
    name for name in inspect.signature(MLflowCallback.__init__).parameters if name not in ("self", "logger_options")
}
_LOGGER_OPTIONS = {name for name in inspect.signature(MLflowLogger.__init__).parameters if name != "self"}

#: None: autolog() was not called, the environment variable decides. Else the options of the last call.
_options: dict[str, Any] | None = None
_enabled = False


def autolog(disable: bool = False, **options: Any) -> None:
    """Record every ``Trainer`` created from now on into MLflow.

    Example::

        import lightning_mlflow_ext
        lightning_mlflow_ext.autolog(experiment_name="cifar")
        trainer = Trainer(max_epochs=3)   # unchanged script: one MLflow run per fit
        trainer.fit(model, datamodule)

    Args:
        disable: turn autolog off for Trainers created afterwards (also when ``LIGHTNING_MLFLOW_AUTOLOG=1``).
        options: ``MLflowLogger`` arguments (``experiment_name``, ``tracking_uri``, ``log_model``, ...) for
            the logger added to a Trainer that has none, and ``MLflowCallback`` arguments (``datasets``,
            ``lineage``, ``figures``, ``log_learning_rate``, ``log_model_summary``, ``log_system_metrics``).

    A Trainer that has its own ``MLflowCallback`` gets nothing more; one with an ``MLflowLogger`` records into
    that logger's run. Inside ``with mlflow.start_run():`` the fit records into that run.
    """
    global _options, _enabled
    unknown = sorted(set(options) - _CALLBACK_OPTIONS - _LOGGER_OPTIONS)
    if unknown:
        raise TypeError(
            f"autolog() got unknown options {unknown}. It takes MLflowLogger arguments "
            f"({', '.join(sorted(_LOGGER_OPTIONS))}) and MLflowCallback arguments "
            f"({', '.join(sorted(_CALLBACK_OPTIONS))})."
        )
    _options = dict(options)
    _enabled = not disable


def autolog_enabled() -> bool:
    if _options is not None:
        return _enabled
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


class MLflowAutologCallback(MLflowCallback):
    """The ``MLflowCallback`` autolog adds to every Trainer; inert when the Trainer has an ``MLflowCallback``
    of its own (nothing is recorded twice)."""

    @override
    def _active(self, trainer: Any) -> bool:
        return not any(
            isinstance(cb, MLflowCallback) and not isinstance(cb, MLflowAutologCallback)
            for cb in trainer_callbacks(trainer)
        )


def callbacks_factory() -> list[Callback]:
    """Entry point of ``lightning.pytorch.callbacks_factory`` and ``pytorch_lightning.callbacks_factory``: the
    bridge for every Trainer, and with autolog on, the autolog callback (before the bridge, so that a logger it
    adds is bound at setup)."""
    callbacks: list[Callback] = []
    if autolog_enabled():
        options = _options or {}
        callbacks.append(
            MLflowAutologCallback(
                **{k: v for k, v in options.items() if k in _CALLBACK_OPTIONS},
                logger_options={k: v for k, v in options.items() if k in _LOGGER_OPTIONS},
            )
        )
    callbacks.append(MLflowTrainerBridge())
    return callbacks


__all__ = ["ENV_VAR", "MLflowAutologCallback", "autolog", "autolog_enabled", "callbacks_factory"]
