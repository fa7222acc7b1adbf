"""Living alongside ``mlflow.pytorch.autolog()``: its callback and this package would both record every metric.

MLflow's autolog adds its own callback to the Trainer inside its patched ``fit`` and records epoch metrics at
step = epoch, the same (key, step) this package records them at. This package keeps the metrics (every step,
both axes, the journal) and mutes that callback's metric logging for this Trainer only; MLflow's autolog
still records what it records besides (its params, model, summary).
"""

from __future__ import annotations

from typing import Any

MLFLOW_AUTOLOG_CALLBACK = "__MlflowPLCallback"


def mute_mlflow_autolog_metrics(callbacks: list[Any]) -> bool | None:
    """Mute the metrics of ``mlflow.pytorch.autolog``'s callback among ``callbacks``.

    Returns None when there is none, True when muted, False when found but it could not be muted (an MLflow
    version whose callback is built differently: its points may then be stored twice).
    """
    found = [cb for cb in callbacks if type(cb).__name__ == MLFLOW_AUTOLOG_CALLBACK]
    if not found:
        return None
    muted = True
    for callback in found:
        if callable(getattr(callback, "_log_metrics", None)):
            callback._log_metrics = _skip  # this instance only; MLflow's class and other Trainers are untouched
        else:
            muted = False
    return muted


def _skip(*args: Any, **kwargs: Any) -> None:
    return None
