"""Where runs are tracked: resolving the tracking URI once, and checking that a server answers.

Reads MLflow's global configuration but never changes it.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlparse

import mlflow
import requests

from lightning_mlflow_ext.errors import TrackingServerUnavailableError


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The argument, else MLflow's own choice (``set_tracking_uri`` -> ``MLFLOW_TRACKING_URI`` -> ``./mlflow.db``).

    Local stores are made absolute now, so a later ``chdir`` or a spawned process writes to the same place.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme.startswith("sqlite"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"{uri.split(':///', 1)[0]}:///{os.path.abspath(path)}"
        return uri
    if parsed.scheme == "file":
        return "file://" + os.path.abspath(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return "file://" + os.path.abspath(uri)
    return uri


def local_store_path(tracking_uri: str) -> str | None:
    """The folder of a ``file:`` store, the only store whose data lives in a plain folder."""
    parsed = urlparse(tracking_uri)
    return parsed.path if parsed.scheme == "file" else None


def is_http(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def probe_server(tracking_uri: str, wait: float) -> None:
    """Return once an HTTP tracking server answers; raise after ``wait`` seconds of silence.

    MLflow's own client retries for minutes with the server down; this check fails in bounded time.
    """
    if not is_http(tracking_uri):
        return
    deadline = time.monotonic() + max(wait, 0.0)
    url = tracking_uri.rstrip("/") + "/health"
    delay = 0.25
    while True:
        try:
            response = requests.get(url, timeout=min(5.0, max(wait, 0.5)))
            if response.status_code < 500:
                return
            problem = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + delay > deadline:
            raise TrackingServerUnavailableError(
                f"The MLflow tracking server at {tracking_uri} did not answer for {wait:.0f} s ({problem}). "
                "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), check tracking_uri / "
                "MLFLOW_TRACKING_URI, or give the logger a longer server_wait."
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
