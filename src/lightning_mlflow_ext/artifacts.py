"""Background uploads to a run's artifact store: files (from a snapshot), small texts, and removals.

The training thread only takes a hard-link snapshot and queues; one worker uploads in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from lightning_mlflow_ext.artifact_store import RunArtifacts

log = logging.getLogger(__name__)


@dataclass
class UploadReport:
    failed: list[str] = field(default_factory=list)
    pending: int = 0


def sha256_of(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()  # reads into one buffer; the GIL is free


def snapshot(path: str | os.PathLike[str], staging: Path, *, link: bool = False) -> Path:
    """A private copy of ``path`` that survives the original being replaced or deleted before the upload.

    ``link=True`` takes a hard link, which costs nothing: right for files replaced by rename or deleted
    (Lightning's checkpoints, pruned by top-k), not for files rewritten in place. A copy is the fallback
    where links are not possible (another file system).
    """
    target = staging / uuid.uuid4().hex / Path(path).name
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(path, target)
            return target
        except OSError:
            pass
    shutil.copy2(path, target)
    return target


#: The nice value of the upload thread (Linux, where a thread has its own): above training's, so that hashing and
#: sending a checkpoint take a core the training loop is not using rather than share its core.
UPLOAD_NICENESS = 10


def yield_to_training() -> None:
    """Lower the calling thread's CPU priority. Only Linux gives a thread its own nice value; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if current < UPLOAD_NICENESS:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)


class ArtifactUploader:
    """Runs upload jobs for one run in a background thread, in the order they were queued."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str, staging: Path) -> None:
        self._client = client
        self._run_id = run_id
        self._artifacts = RunArtifacts(client, run_id, tracking_uri)
        self.staging = staging
        self._jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self._cond = threading.Condition()
        self._queued = 0
        self._done = 0
        self._report = UploadReport()
        self._thread: threading.Thread | None = None

    def submit(self, description: str, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append((description, job))
            self._queued += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"mlflow-uploads-{self._run_id[:8]}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def upload_with_metadata(
        self, local: Path, artifact_dir: str, metadata: dict[str, Any], uploaded: dict[str, str]
    ) -> None:
        """Upload a snapshot unless the run already holds the same bytes there, then a metadata JSON beside it.

        ``uploaded`` maps artifact paths to the sha256 last uploaded; the snapshot is removed afterwards.
        """
        artifact_path = f"{artifact_dir}/{local.name}"

        def job() -> None:
            digest = sha256_of(local)
            metadata["sha256"] = digest
            if uploaded.get(artifact_path) != digest:
                self._artifacts.log_file(local, artifact_dir)
                uploaded[artifact_path] = digest
            self._store_text(json.dumps(metadata, indent=2), artifact_path + ".json")

        self._submit_then_remove(f"upload {artifact_path}", local, job)

    def upload_bytes(self, data: bytes, artifact_file: str) -> None:
        staged = self._staged(artifact_file)
        staged.write_bytes(data)
        self.upload_snapshot(staged, posixpath.dirname(artifact_file) or None)

    def _staged(self, artifact_file: str) -> Path:
        """A fresh file in a folder of its own under staging, named like ``artifact_file``."""
        staged = self.staging / uuid.uuid4().hex / posixpath.basename(artifact_file)
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def _store_text(self, text: str, artifact_file: str) -> None:
        """On the worker: store ``text`` (UTF-8) as ``artifact_file``, through the same path as every file."""
        staged = self._staged(artifact_file)
        try:
            staged.write_text(text, encoding="utf-8")
            self._artifacts.log_file(staged, posixpath.dirname(artifact_file) or None)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    def upload_snapshot(self, local: Path, artifact_dir: str | None) -> None:
        """Upload a snapshot (see ``snapshot``) into ``artifact_dir``, then remove it."""

        def job() -> None:
            self._artifacts.log_file(local, artifact_dir)

        self._submit_then_remove(f"upload {artifact_dir or '.'}/{local.name}", local, job)

    def _submit_then_remove(self, description: str, snapshot_file: Path, job: Callable[[], None]) -> None:
        """Run ``job`` in the background, then delete the snapshot it read, whether it worked or not."""

        def run_and_remove() -> None:
            try:
                job()
            finally:
                shutil.rmtree(snapshot_file.parent, ignore_errors=True)

        self.submit(description, run_and_remove)

    def log_image(self, image: Any, key: str | None, step: int | None, artifact_file: str | None) -> None:
        def job() -> None:
            if artifact_file is not None:
                self._client.log_image(self._run_id, image, artifact_file=artifact_file)
            else:
                self._client.log_image(self._run_id, image, key=key, step=step, synchronous=True)

        self.submit(f"log image {key or artifact_file}", job)

    def log_table(self, data: Any, artifact_file: str) -> None:
        self.submit(f"log table {artifact_file}", lambda: self._client.log_table(self._run_id, data, artifact_file))

    def upload_text(self, text: str, artifact_file: str) -> None:
        self.submit(f"write {artifact_file}", lambda: self._store_text(text, artifact_file))

    def delete(self, artifact_path: str, on_unsupported: Callable[[], None]) -> None:
        """Remove an artifact where the store supports it; otherwise call ``on_unsupported``."""

        def job() -> None:
            try:
                self._artifacts.delete(artifact_path)
            except (NotImplementedError, AttributeError):
                on_unsupported()

        self.submit(f"delete {artifact_path}", job)

    def flush(self, timeout: float | None = None) -> UploadReport:
        with self._cond:
            target = self._queued
            self._cond.wait_for(lambda: self._done >= target, timeout)
            report, self._report = self._report, UploadReport()
            report.pending = self._queued - self._done
        return report

    def _run(self) -> None:
        yield_to_training()
        while True:
            with self._cond:
                if not self._jobs and not self._cond.wait_for(lambda: bool(self._jobs), timeout=30):
                    self._thread = None  # idle: the next submit starts a new worker
                    return
                description, job = self._jobs.popleft()
            try:
                job()
            except Exception as exc:  # one failed upload must not stop the ones after it
                log.warning("MLflow run %s: could not %s: %s", self._run_id, description, exc)
                with self._cond:
                    self._report.failed.append(f"{description}: {exc}")
            with self._cond:
                self._done += 1
                self._cond.notify_all()
