"""Sends one batch of writes to the tracking store and says whether a failure is worth retrying.

HTTP servers are called with this package's own timeout and no hidden retries; other stores via MlflowClient.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from lightning_mlflow_ext.tracking import is_http

#: A metric point: (key, value, timestamp in ms, step).
MetricPoint = tuple[str, float, int, int]
KeyValue = tuple[str, str]

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
UPDATE_RUN = "/api/2.0/mlflow/runs/update"
#: MLflow error codes that say the request itself is wrong; sending it again cannot help.
PERMANENT_CODES = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "PERMISSION_DENIED"}
)


class DeliveryError(Exception):
    """A batch did not reach the store."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Transport(Protocol):
    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricPoint] = (),
        params: Sequence[KeyValue] = (),
        tags: Sequence[KeyValue] = (),
    ) -> None: ...

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None: ...


def _json_value(value: float) -> float | str:
    # Protobuf's JSON form, which the server parses; a bare NaN token is not JSON.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class HttpTransport:
    """Talks to an MLflow server's REST API with one attempt per call and a bounded timeout."""

    def __init__(self, tracking_uri: str, timeout: float = 30.0) -> None:
        self._tracking_uri = tracking_uri
        self._timeout = timeout

    def _post(self, endpoint: str, body: dict[str, Any]) -> None:
        try:
            response = http_request(  # type: ignore[no-untyped-call]
                get_default_host_creds(self._tracking_uri),  # type: ignore[no-untyped-call]
                endpoint,
                "POST",
                max_retries=0,
                timeout=self._timeout,
                raise_on_status=False,
                data=json.dumps(body),
                extra_headers={"Content-Type": "application/json"},
            )
        except (MlflowException, requests.RequestException, OSError) as exc:
            raise DeliveryError(f"{self._tracking_uri} unreachable: {exc}", transient=True) from exc
        if response.status_code == 200:
            return
        detail = response.text[:500]
        code = ""
        with contextlib.suppress(ValueError, AttributeError):
            code = str(json.loads(response.text).get("error_code", ""))
        transient = response.status_code == 429 or response.status_code >= 500
        if code in PERMANENT_CODES:
            transient = False
        raise DeliveryError(f"HTTP {response.status_code} from {self._tracking_uri}: {detail}", transient=transient)

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricPoint] = (),
        params: Sequence[KeyValue] = (),
        tags: Sequence[KeyValue] = (),
    ) -> None:
        body: dict[str, Any] = {"run_id": run_id}
        if metrics:
            body["metrics"] = [
                {"key": key, "value": _json_value(value), "timestamp": ts, "step": step}
                for key, value, ts, step in metrics
            ]
        if params:
            body["params"] = [{"key": key, "value": value} for key, value in params]
        if tags:
            body["tags"] = [{"key": key, "value": value} for key, value in tags]
        self._post(LOG_BATCH, body)

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self._post(UPDATE_RUN, body)


class ClientTransport:
    """Any other store (the embedded SQLite one, databricks, plugins) through ``MlflowClient``."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricPoint] = (),
        params: Sequence[KeyValue] = (),
        tags: Sequence[KeyValue] = (),
    ) -> None:
        try:
            self._client.log_batch(
                run_id,
                metrics=[Metric(key, value, ts, step) for key, value, ts, step in metrics],
                params=[Param(key, value) for key, value in params],
                tags=[RunTag(key, value) for key, value in tags],
                synchronous=True,
            )
        except Exception as exc:
            raise _classify(exc) from exc

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None:
        try:
            if status == "RUNNING":
                self._client.update_run(run_id, status=status)
            else:
                self._client.set_terminated(run_id, status=status, end_time=end_time)
        except Exception as exc:
            raise _classify(exc) from exc


def _classify(exc: Exception) -> DeliveryError:
    if isinstance(exc, MlflowException) and exc.error_code in PERMANENT_CODES:
        return DeliveryError(str(exc), transient=False)
    # A locked SQLite file, a dropped connection, a full disk that gets space back: worth another try.
    return DeliveryError(f"{type(exc).__name__}: {exc}", transient=True)


def make_transport(tracking_uri: str, client: MlflowClient) -> Transport:
    if is_http(tracking_uri):
        return HttpTransport(tracking_uri)
    return ClientTransport(client)
