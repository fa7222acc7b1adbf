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

from lightning_mlflow_ext.run.fluent import note_last_active_run
from lightning_mlflow_ext.trainer.autolog_compat import MLflowAutologCompat
from lightning_mlflow_ext.trainer.bridge import MLflowTrainerBridge
from lightning_mlflow_ext.trainer.callback import MLflowCallback
from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.trainer.summaries import trainer_callbacks

ENV_VAR = "LIGHTNING_MLFLOW_AUTOLOG"
_CALLBACK_OPTIONS = {
    name for name in inspect.signature(MLflowCallback.__init__).parameters if name not in ("self", "logger_options")
}
_LOGGER_OPTIONS = {name for name in inspect.signature(MLflowLogger.__init__).parameters if name != "self"}
#: ``mlflow.pytorch.autolog()``'s options, with its meaning (``autolog_compat``).
_COMPAT_OPTIONS = {name for name in inspect.signature(MLflowAutologCompat.__init__).parameters if name != "self"}
#: ``mlflow.pytorch.autolog()``'s options that change nothing here: accepted, so a migrated call runs as it is.
_MLFLOW_NO_OP_OPTIONS = {"log_datasets", "disable_for_unsupported_versions", "silent", "exclusive"}
COMPAT_SWITCH = "mlflow_compat"

#: None: autolog() was not called, the environment variable decides. Else the options of the last call.
_options: dict[str, Any] | None = None
_enabled = False


def autolog(disable: bool = False, mlflow_compat: bool = True, **options: Any) -> None:
    """Record every ``Trainer`` created from now on into MLflow.

    Example::

        import lightning_mlflow_ext
        lightning_mlflow_ext.autolog(experiment_name="cifar")
        trainer = Trainer(max_epochs=3)   # unchanged script: one MLflow run per fit
        trainer.fit(model, datamodule)

    Args:
        disable: turn autolog off for Trainers created afterwards (also when ``LIGHTNING_MLFLOW_AUTOLOG=1``).
        mlflow_compat: also record what ``mlflow.pytorch.autolog()`` records, under its names and in its places
            (params ``lr``, ``optimizer_name``, ``epochs``, EarlyStopping's ``patience``, ...; the tag
            ``mlflow.autologging``; the trained model ``model``; its checkpoints), next to this package's own
            names, and make ``mlflow.last_active_run()`` / ``mlflow.last_logged_model()`` return the fit's run and
            model (``trainer/autolog_compat.py``). ``False``: this package's names only.
        options: ``MLflowLogger`` arguments (``experiment_name``, ``tracking_uri``, ``log_model``, ...) for
            the logger added to a Trainer that has none, ``MLflowCallback`` arguments (``datasets``,
            ``lineage``, ``figures``, ``log_learning_rate``, ``log_model_summary``, ``log_system_metrics``), and
            ``mlflow.pytorch.autolog()``'s, with its meaning and defaults (``log_every_n_epoch=1``,
            ``log_every_n_step=None``, ``log_models=True``, ``log_model_signatures=True``, ``extra_tags``,
            ``registered_model_name``: a new version of the trained model per fit, ``checkpoint=True``,
            ``checkpoint_monitor="val_loss"``, ``checkpoint_mode="min"``, ``checkpoint_save_best_only=True``,
            ``checkpoint_save_weights_only=False``, ``checkpoint_save_freq="epoch"``; ``log_datasets``,
            ``silent`` and ``disable_for_unsupported_versions`` change nothing). With ``mlflow_compat=False``
            ``registered_model_name`` is ``MLflowLogger``'s: the best checkpoint's model, as ``@best``.

    A Trainer that has its own ``MLflowCallback`` gets nothing more; one with an ``MLflowLogger`` records into
    that logger's run. Inside ``with mlflow.start_run():`` the fit records into that run.
    """
    global _options, _enabled
    unknown = sorted(set(options) - _CALLBACK_OPTIONS - _LOGGER_OPTIONS - _COMPAT_OPTIONS - _MLFLOW_NO_OP_OPTIONS)
    if unknown:
        raise TypeError(
            f"autolog() got unknown options {unknown}. It takes MLflowLogger arguments "
            f"({', '.join(sorted(_LOGGER_OPTIONS))}), MLflowCallback arguments "
            f"({', '.join(sorted(_CALLBACK_OPTIONS))}) and mlflow.pytorch.autolog()'s "
            f"({', '.join(sorted(_COMPAT_OPTIONS | _MLFLOW_NO_OP_OPTIONS))})."
        )
    if options.get("exclusive"):
        raise ValueError(
            "autolog(exclusive=True) is not supported: inside `with mlflow.start_run():` the fit records into that "
            "run. To record into a run of its own, fit outside the block, or give the Trainer an MLflowLogger."
        )
    compat_only = sorted(set(options) & _COMPAT_OPTIONS - _LOGGER_OPTIONS)
    if not mlflow_compat and compat_only:
        raise TypeError(f"autolog(mlflow_compat=False) takes none of mlflow.pytorch.autolog()'s options {compat_only}.")
    if mlflow_compat:
        MLflowAutologCompat(**{k: v for k, v in options.items() if k in _COMPAT_OPTIONS})  # bad values fail now
    _options = {**options, COMPAT_SWITCH: mlflow_compat}
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

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        self._note_run(trainer)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._note_run(trainer)  # a fit resumed from a checkpoint may have moved to the checkpoint's run

    def _note_run(self, trainer: Any) -> None:
        """``mlflow.last_active_run()`` returns the fit's run, as after a fit under ``mlflow.pytorch.autolog()``."""
        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)), None)
        if logger is not None and trainer.global_rank == 0:
            note_last_active_run(logger.run_id)


def callbacks_factory() -> list[Callback]:
    """Entry point of ``lightning.pytorch.callbacks_factory`` and ``pytorch_lightning.callbacks_factory``: the
    bridge for every Trainer, and with autolog on, the autolog callback (before the bridge, so that a logger it
    adds is bound at setup)."""
    callbacks: list[Callback] = []
    options = _options or {}
    compat = autolog_enabled() and options.get(COMPAT_SWITCH, True)
    # MLflow's meaning of registered_model_name (the trained model) when its names are recorded, else the logger's.
    logger_options = {k: v for k, v in options.items() if k in _LOGGER_OPTIONS}
    if compat:
        logger_options.pop("registered_model_name", None)
    if autolog_enabled():
        callbacks.append(
            MLflowAutologCallback(
                **{k: v for k, v in options.items() if k in _CALLBACK_OPTIONS}, logger_options=logger_options
            )
        )
    callbacks.append(MLflowTrainerBridge())
    if compat:
        callbacks.append(MLflowAutologCompat(**{k: v for k, v in options.items() if k in _COMPAT_OPTIONS}))
    return callbacks


__all__ = ["ENV_VAR", "MLflowAutologCallback", "MLflowAutologCompat", "autolog", "autolog_enabled", "callbacks_factory"]
