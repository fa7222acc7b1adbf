"""Where a run's artifact files go: over one kept-alive connection to an MLflow server's artifact proxy, or
through MLflow's artifact repository for every other store.

``MlflowClient.log_artifact`` fetches the run on every call and streams the file through ``requests`` in
16 KB pieces, each taking the GIL back from training. Against the proxy (``mlflow-artifacts:``, the
default of ``mlflow server``), this sends the file with ``sendfile`` instead: the kernel moves the bytes.
"""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import urllib.parse
from pathlib import Path

from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD
from mlflow.store.artifact.artifact_repo import ArtifactRepository, verify_artifact_path
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.utils.mime_type_utils import _guess_mime_type

from lightning_mlflow_ext.delivery.endpoint import Endpoint
from lightning_mlflow_ext.delivery.faults import DeliveryError, Fault, classify_response
from lightning_mlflow_ext.delivery.logged_models import (
    delete_logged_model,
    lacks_logged_models,
    log_staged_model,
    without_logged_models,
)
from lightning_mlflow_ext.delivery.records import ArtifactOp

#: Seconds a single send or receive of an upload may stall before it counts as failed.
UPLOAD_TIMEOUT_S = 300.0


class RunArtifacts:
    """One run's artifact store, looked up once."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str, artifact_uri: str | None = None) -> None:
        """``artifact_uri``: the run's, when known (the session knows it from resolving the run); otherwise it is
        read from the store on first use, with MLflow's client and its retries."""
        self._client = client
        self._run_id = run_id
        self._tracking_uri = self.tracking_uri = tracking_uri
        self._artifact_uri = artifact_uri
        self._repository: ArtifactRepository | None = None
        self._endpoint: Endpoint | None = None

    @property
    def repository(self) -> ArtifactRepository:
        """The run's artifact repository; building it makes no request when the artifact URI is known."""
        if self._repository is None:
            artifact_uri = self._artifact_uri or self._client.get_run(self._run_id).info.artifact_uri
            self._repository = get_artifact_repository(artifact_uri, tracking_uri=self._tracking_uri)
            if isinstance(self._repository, HttpArtifactRepository):
                self._endpoint = Endpoint(self._repository.artifact_uri)
        return self._repository

    def log_file(self, local: Path, artifact_dir: str | None) -> None:
        """Store ``local`` as ``<artifact_dir>/<its name>``, as ``MlflowClient.log_artifact`` would."""
        repository = self.repository
        if self._endpoint is None or MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD.get():  # type: ignore[no-untyped-call]
            repository.log_artifact(str(local), artifact_dir)  # type: ignore[no-untyped-call]
            return
        verify_artifact_path(artifact_dir)  # type: ignore[no-untyped-call]
        artifact_path = posixpath.join(artifact_dir, local.name) if artifact_dir else local.name
        endpoint = "/" + urllib.parse.quote(artifact_path, safe="/")
        content_type = _guess_mime_type(local.name)  # type: ignore[no-untyped-call]
        answer = self._endpoint.put_file(endpoint, local, content_type, UPLOAD_TIMEOUT_S)
        if answer.status != 200:
            fault = classify_response(str(repository.artifact_uri), answer.status, answer.text, answer.headers)
            raise DeliveryError(
                f"storing artifact {artifact_path}: {fault}",
                fault.fault,
                status=fault.status,
                retry_after=fault.retry_after,
                advice=fault.advice,
            )

    def apply(self, op: ArtifactOp) -> None:
        """Make one journaled change: store a staged file (then remove it), or delete an artifact (a store that
        cannot delete keeps it: nothing else to do)."""
        if op.kind == "delete":
            if self.can_delete:
                with contextlib.suppress(NotImplementedError, AttributeError):
                    self.delete(op.path)
            return
        if op.kind in ("model", "delete_model"):
            self._apply_model_change(op)
            return
        local = Path(op.path)
        if not local.is_file():
            raise DeliveryError(
                f"the staged copy {local} is gone (stored already, or removed); {op.describe()} is skipped",
                Fault.ONE_RECORD,
            )
        try:
            self.log_file(local, op.artifact_dir)
        except DeliveryError as exc:
            if exc.fault is Fault.ONE_RECORD:  # refused for good: the staged copy is of no more use
                remove_staged(local)
            raise
        remove_staged(local)

    def _apply_model_change(self, op: ArtifactOp) -> None:
        """Log or delete a logged model; on a store without logged models (said once), drop the change: the
        checkpoint is in the run's artifacts anyway."""
        details = op.details or {}
        try:
            if without_logged_models(str(self._client.tracking_uri)):
                pass
            elif op.kind == "delete_model":
                delete_logged_model(self._client, str(details["experiment_id"]), op.path)
            else:
                log_staged_model(self._client, self._run_id, Path(op.path), details)
        except Exception as exc:
            if not lacks_logged_models(self._client, exc):
                raise
        if op.kind == "model":
            remove_staged(Path(op.path))

    def abort(self) -> None:
        """Cut off an upload in flight on another thread (the run is ending)."""
        if self._endpoint is not None:
            self._endpoint.abort()

    @property
    def can_delete(self) -> bool:
        """Whether this store can remove an artifact (MLflow's base repository silently does nothing)."""
        return type(self.repository).delete_artifacts is not ArtifactRepository.delete_artifacts

    def delete(self, artifact_path: str) -> None:
        """Remove an artifact; NotImplementedError or AttributeError where the store cannot."""
        self.repository.delete_artifacts(artifact_path)  # type: ignore[no-untyped-call]


def remove_staged(local: Path) -> None:
    """Remove a staged copy and the folder of its own it was staged in."""
    shutil.rmtree(local.parent, ignore_errors=True)
