"""System metrics (CPU, memory, disk, network, GPU when present) of this process's machine, recorded into a
run by MLflow's own monitor for as long as a fit runs.

MLflow's settings apply: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds, default 10),
``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` (default 1) and ``MLFLOW_SYSTEM_METRICS_NODE_ID``.

MLflow's monitor takes the run's store (``tracking_uri``) from MLflow 3.7 on; before that it writes to the process's
tracking URI, so there it records only a run of that store and otherwise says why it does not.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import mlflow
from mlflow.environment_variables import (
    MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
)

from lightning_mlflow_ext.values.urls import strip_url_credentials

log = logging.getLogger(__name__)


class SystemMetrics:
    """Samples in a background thread from construction until ``stop()`` (or until the run ends)."""

    def __init__(self, run_id: str, tracking_uri: str, node_id: str | None = None) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        options: dict[str, Any] = {
            "sampling_interval": MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10.0,  # type: ignore[no-untyped-call]
            "samples_before_logging": MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING.get() or 1,  # type: ignore[no-untyped-call]
            "resume_logging": True,  # a resumed run's system metrics carry on from its last step
            "node_id": node_id,
        }
        self._monitor: Any = None
        if "tracking_uri" in inspect.signature(SystemMetricsMonitor.__init__).parameters:
            options["tracking_uri"] = tracking_uri
        elif mlflow.get_tracking_uri() != tracking_uri:
            log.warning(
                "System metrics are not recorded: the monitor of MLflow %s writes to the process's tracking URI "
                "(%s), not to this run's store (%s). Upgrade to MLflow 3.7 or later, or set MLFLOW_TRACKING_URI to "
                "the run's store.",
                mlflow.__version__,
                strip_url_credentials(mlflow.get_tracking_uri()),
                strip_url_credentials(tracking_uri),
            )
            return
        self._monitor = SystemMetricsMonitor(run_id, **options)  # type: ignore[no-untyped-call]
        self._monitor.start()

    def stop(self) -> None:
        if self._monitor is None:
            return
        try:
            self._monitor.finish()
        except Exception as exc:  # the fit is over; a monitor that could not send its last sample is not an error
            log.warning("MLflow system metrics monitor did not stop cleanly: %s", exc)
