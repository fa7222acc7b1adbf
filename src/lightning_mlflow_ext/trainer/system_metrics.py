"""System metrics (CPU, memory, disk, network, GPU when present) of this process's machine, recorded into a
run by MLflow's own monitor for as long as a fit runs.

MLflow's settings apply: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds, default 10),
``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` (default 1) and ``MLFLOW_SYSTEM_METRICS_NODE_ID``.
"""

from __future__ import annotations

import logging

from mlflow.environment_variables import (
    MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
)

log = logging.getLogger(__name__)


class SystemMetrics:
    """Samples in a background thread from construction until ``stop()`` (or until the run ends)."""

    def __init__(self, run_id: str, tracking_uri: str, node_id: str | None = None) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
            run_id,
            sampling_interval=MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or 10.0,  # type: ignore[no-untyped-call]
            samples_before_logging=MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING.get() or 1,  # type: ignore[no-untyped-call]
            resume_logging=True,  # a resumed run's system metrics carry on from its last step
            node_id=node_id,
            tracking_uri=tracking_uri,
        )
        self._monitor.start()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        try:
            self._monitor.finish()  # type: ignore[no-untyped-call]
        except Exception as exc:  # the fit is over; a monitor that could not send its last sample is not an error
            log.warning("MLflow system metrics monitor did not stop cleanly: %s", exc)
