"""Where runs are tracked: resolving the tracking URI once, and checking that a server answers.

Reads MLflow's global configuration but never changes it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException

from lightning_mlflow_ext.delivery.endpoint import Endpoint, is_http
from lightning_mlflow_ext.delivery.faults import TLS_ADVICE, DeliveryError, Fault, classify_exception, classify_response
from lightning_mlflow_ext.errors import (
    CredentialsRefusedError,
    LightningMLflowError,
    TrackingServerUnavailableError,
    UntrustedCertificateError,
)


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


def probe_server(tracking_uri: str, wait: float) -> None:
    """Return once an HTTP tracking server answers; raise after ``wait`` seconds of silence.

    The check goes out with MLflow's own host credentials and TLS settings (CA bundle, insecure TLS, client
    certificate, auth), as every later request does. MLflow's client retries for minutes with the server down;
    this fails in bounded time, and at once when waiting cannot help (an untrusted certificate, refused
    credentials).
    """
    if not is_http(tracking_uri):
        return

    endpoint = Endpoint(tracking_uri)
    deadline = time.monotonic() + max(wait, 0.0)
    delay = 0.25
    while True:
        try:
            answer = endpoint.request("GET", "/health", None, min(5.0, max(wait, 0.5)))
            if answer.status < 500 and answer.status != 429:
                if answer.status in (401, 403):
                    raise_refused(tracking_uri, classify_response(tracking_uri, answer.status, answer.text))
                return
            problem = f"HTTP {answer.status}"
        except LightningMLflowError:
            raise
        except Exception as exc:
            fault = classify_exception(tracking_uri, exc)
            if fault.fault is Fault.RUN_WIDE and fault.advice is TLS_ADVICE:
                raise UntrustedCertificateError(f"Cannot connect to {fault}: {fault.advice}.") from None
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() + delay > deadline:
            raise TrackingServerUnavailableError(
                f"The MLflow tracking server at {tracking_uri} did not answer for {wait:.0f} s ({problem}). "
                "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), check tracking_uri / "
                "MLFLOW_TRACKING_URI, or give the logger a longer server_wait."
            )
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def raise_refused(tracking_uri: str, fault: DeliveryError) -> NoReturn:
    """Raise the error a user sees when the server refuses the credentials: what to set, never a value."""
    raise CredentialsRefusedError(
        f"The MLflow tracking server at {tracking_uri} refused the credentials (HTTP {fault.status}): "
        f"{fault.advice}. Nothing was trained or logged."
    ) from None


@contextlib.contextmanager
def refusals_explained(tracking_uri: str) -> Iterator[None]:
    """Inside: an MLflow call refused for credentials or an untrusted certificate raises this package's error
    that says what to set, instead of MLflow's raw HTTP error."""
    try:
        yield
    except MlflowException as exc:
        fault = classify_exception(tracking_uri, exc)
        if fault.fault is Fault.RUN_WIDE and fault.status in (401, 403):
            raise_refused(tracking_uri, fault)
        if fault.fault is Fault.RUN_WIDE and fault.advice is TLS_ADVICE:
            raise UntrustedCertificateError(f"Cannot connect to {fault}: {fault.advice}.") from None
        raise
