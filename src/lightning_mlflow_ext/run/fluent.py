"""MLflow's fluent API as a user's script sees it: the active run, and what ``mlflow.last_active_run()`` and
``mlflow.last_logged_model()`` return after a fit.

Those two read thread-local variables of ``mlflow.tracking.fluent`` that only MLflow's own fluent calls set
(``end_run``, ``log_model``); this package writes through its own client and delivery, so it sets them here, on
the thread that runs the fit (the user's). MLflow has no public setter: if a version renames them, nothing is
set and the two calls return what MLflow alone knows (a warning says so, once).
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow

log = logging.getLogger(__name__)
_warned = False


def active_run_id() -> str | None:
    """The id of this thread's active fluent run (``with mlflow.start_run():``), if any."""
    active = mlflow.active_run()
    return None if active is None else str(active.info.run_id)


def note_last_active_run(run_id: str) -> None:
    """``mlflow.last_active_run()`` returns this run once no fluent run is active."""
    _set("_last_active_run_id", run_id)


def note_last_logged_model(model_id: str) -> None:
    """``mlflow.last_logged_model()`` returns this logged model."""
    _set("_last_logged_model_id", model_id)


def _set(name: str, value: str) -> None:
    global _warned
    from mlflow.tracking import fluent

    variable: Any = getattr(fluent, name, None)
    if variable is not None and callable(getattr(variable, "set", None)):
        variable.set(value)
    elif not _warned:
        _warned = True
        log.warning(
            "This MLflow version keeps no %s in mlflow.tracking.fluent: mlflow.last_active_run() and "
            "mlflow.last_logged_model() do not see this package's runs and models; use the logger's run_id.",
            name,
        )
