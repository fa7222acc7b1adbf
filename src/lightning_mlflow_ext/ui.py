"""Links to a run in the MLflow UI, and the command that opens the UI on a local store.

Used by the quickstart, the CLI and notebooks.
"""

from __future__ import annotations

from lightning_mlflow_ext.run.tracking import is_http


def run_link(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str = "http://127.0.0.1:5000") -> str:
    """The run's page: on the tracking server itself, or on a local ``mlflow ui`` for a local store."""
    base = tracking_uri.rstrip("/") if is_http(tracking_uri) else ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_command(tracking_uri: str) -> str | None:
    """The shell command that opens the MLflow UI on a local store; None for a server (it has its own UI)."""
    if is_http(tracking_uri):
        return None
    return f"mlflow ui --backend-store-uri '{tracking_uri}' --port 5000"
