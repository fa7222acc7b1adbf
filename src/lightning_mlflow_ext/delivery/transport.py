"""Sends one batch of writes to the tracking store and says whether a failure is worth retrying.

HTTP servers are called with this package's own timeout and no hidden retries; other stores via MlflowClient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from lightning_mlflow_ext.delivery.endpoint import Endpoint, is_http
from lightning_mlflow_ext.delivery.faults import classify_exception, classify_response
from lightning_mlflow_ext.delivery.records import KeyValue, MetricPoint

#: ``Endpoint``, ``MetricPoint`` and ``KeyValue`` too: callers reach them here, with the transport that uses them.
__all__ = [
    "LOG_BATCH",
    "ClientTransport",
    "Endpoint",
    "HttpTransport",
    "KeyValue",
    "MetricPoint",
    "Transport",
    "make_transport",
    "request_timeout",
]

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
UPDATE_RUN = "/api/2.0/mlflow/runs/update"
LOG_INPUTS = "/api/2.0/mlflow/runs/log-inputs"


class Transport(Protocol):
    tracking_uri: str

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricPoint] = (),
        params: Sequence[KeyValue] = (),
        tags: Sequence[KeyValue] = (),
    ) -> None: ...

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None: ...

    def log_inputs(self, run_id: str, inputs: Sequence[Mapping[str, str]]) -> None:
        """Dataset inputs, each the dataset's fields and its split as ``context``."""

    def abort(self) -> None:
        """Make a request in flight on another thread fail now (the run is ending and cannot wait for it)."""


def _json_value(value: float) -> str:
    """A float as the server's JSON parser reads it: protobuf's names for the non-finite ones (a bare NaN token
    is not JSON), the shortest round-trip form for the rest."""
    if value - value == 0.0:
        return repr(float(value))
    if value != value:
        return '"NaN"'
    return '"Infinity"' if value > 0 else '"-Infinity"'


class _MetricsJson:
    """The ``metrics`` array of a ``log_batch`` body, written straight to text.

    Building a dict per point for ``json.dumps`` costs the writer about 1.8 ms of GIL per 1000 points; this
    costs 0.9 ms. Each key is JSON-encoded once per run.
    """

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def __call__(self, metrics: Sequence[MetricPoint]) -> str:
        keys = self._keys
        parts = []
        for key, value, ts, step in metrics:
            encoded = keys.get(key)
            if encoded is None:
                encoded = keys[key] = json.dumps(key)
            parts.append(f'{{"key":{encoded},"value":{_json_value(value)},"timestamp":{int(ts)},"step":{int(step)}}}')
        return "[" + ",".join(parts) + "]"


#: Seconds one request may take before it counts as failed (and is retried), unless MLflow's own
#: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` asks for less.
REQUEST_TIMEOUT_S = 30.0


def request_timeout() -> float:
    """This package's request timeout: REQUEST_TIMEOUT_S, or MLflow's ``MLFLOW_HTTP_REQUEST_TIMEOUT`` if lower."""
    try:
        configured = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_S))
    except ValueError:
        return REQUEST_TIMEOUT_S
    return min(configured, REQUEST_TIMEOUT_S) if configured > 0 else REQUEST_TIMEOUT_S


class HttpTransport:
    """Talks to an MLflow server's REST API with one attempt per call and a bounded timeout."""

    def __init__(self, tracking_uri: str, timeout: float | None = None) -> None:
        self.tracking_uri = self._tracking_uri = tracking_uri
        self._timeout = request_timeout() if timeout is None else timeout
        self._endpoint = Endpoint(tracking_uri)
        self._metrics_json = _MetricsJson()

    def _post(self, endpoint: str, body: dict[str, Any], metrics_json: str | None = None) -> None:
        text_body = json.dumps(body)
        if metrics_json is not None:  # spliced in as written: it is the bulk of the request
            text_body = text_body[:-1] + ', "metrics": ' + metrics_json + "}"
        try:
            answer = self._endpoint.post(endpoint, text_body, self._timeout)
        except Exception as exc:
            raise classify_exception(self._tracking_uri, exc) from exc
        if answer.status != 200:
            raise classify_response(self._tracking_uri, answer.status, answer.text, answer.headers)

    def log_inputs(self, run_id: str, inputs: Sequence[Mapping[str, str]]) -> None:
        datasets = [
            {
                "tags": [{"key": MLFLOW_DATASET_CONTEXT, "value": item["context"]}],
                "dataset": {key: value for key, value in item.items() if key != "context"},
            }
            for item in inputs
        ]
        self._post(LOG_INPUTS, {"run_id": run_id, "datasets": datasets})

    def abort(self) -> None:
        self._endpoint.abort()

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricPoint] = (),
        params: Sequence[KeyValue] = (),
        tags: Sequence[KeyValue] = (),
    ) -> None:
        body: dict[str, Any] = {"run_id": run_id}
        if params:
            body["params"] = [{"key": key, "value": value} for key, value in params]
        if tags:
            body["tags"] = [{"key": key, "value": value} for key, value in tags]
        self._post(LOG_BATCH, body, self._metrics_json(metrics) if metrics else None)

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self._post(UPDATE_RUN, body)


class ClientTransport:
    """Any other store (the embedded SQLite one, databricks, plugins) through ``MlflowClient``."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client
        self.tracking_uri = self._tracking_uri = str(client.tracking_uri)

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
            raise classify_exception(self._tracking_uri, exc) from exc

    def set_status(self, run_id: str, status: str, end_time: int | None) -> None:
        try:
            if status == "RUNNING":
                self._client.update_run(run_id, status=status)
            else:
                self._client.set_terminated(run_id, status=status, end_time=end_time)
        except Exception as exc:
            raise classify_exception(self._tracking_uri, exc) from exc

    def log_inputs(self, run_id: str, inputs: Sequence[Mapping[str, str]]) -> None:
        datasets = [
            DatasetInput(
                Dataset(
                    name=item["name"],
                    digest=item["digest"],
                    source_type=item["source_type"],
                    source=item["source"],
                    schema=item.get("schema"),
                    profile=item.get("profile"),
                ),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, item["context"])],
            )
            for item in inputs
        ]
        try:
            self._client.log_inputs(run_id, datasets=datasets)
        except Exception as exc:
            raise classify_exception(self._tracking_uri, exc) from exc

    def abort(self) -> None:
        """A local store's call cannot be interrupted; it does not wait on a network."""


def make_transport(tracking_uri: str, client: MlflowClient) -> Transport:
    if is_http(tracking_uri):
        return HttpTransport(tracking_uri)
    return ClientTransport(client)
