"""Links to a run in the MLflow UI, and the command that opens the UI on a local store.

Used by the link a fit shows at its end (``trainer/run_notice.py``), the quickstart, the CLI and notebooks.
Credentials in a tracking URI never reach a link or a command.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlparse

from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

from lightning_mlflow_ext.delivery.endpoint import is_http
from lightning_mlflow_ext.values.urls import strip_url_credentials

#: Stores ``mlflow ui --backend-store-uri`` opens: a folder or a database (a ``+driver`` suffix allowed).
LOCAL_STORE_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql")
#: Where ``ui_command``'s UI listens, and so where a local store's run links point.
LOCAL_UI_URL = "http://127.0.0.1:5000"


def is_local_store(tracking_uri: str) -> bool:
    """A store this process reads and writes directly (no server): no URL exists until ``mlflow ui`` serves it."""
    return urlparse(tracking_uri).scheme.split("+", 1)[0] in LOCAL_STORE_SCHEMES


def experiment_link(tracking_uri: str, experiment_id: str, ui_url: str = LOCAL_UI_URL) -> str:
    """The experiment's page: on the tracking server itself, or on a local ``mlflow ui`` for a local store."""
    base = strip_url_credentials(tracking_uri).rstrip("/") if is_http(tracking_uri) else ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str = LOCAL_UI_URL) -> str:
    """The run's page: on the tracking server itself, or on a local ``mlflow ui`` for a local store."""
    return f"{experiment_link(tracking_uri, experiment_id, ui_url)}/runs/{run_id}"


def ui_command(tracking_uri: str) -> str | None:
    """The shell command that opens the MLflow UI on a local store (at ``LOCAL_UI_URL``); None for a server (it
    has its own UI) and for stores that are not local (``databricks``: the platform shows its own links)."""
    if not is_local_store(tracking_uri):
        return None
    return f"mlflow ui --backend-store-uri {shlex.quote(strip_url_credentials(tracking_uri))} --port 5000"


def links_suppressed() -> bool:
    """MLflow's own switch for the run links it prints, ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``, is on."""
    return bool(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get())  # type: ignore[no-untyped-call]
