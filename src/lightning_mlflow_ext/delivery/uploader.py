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
import re
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image

from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts, remove_staged
from lightning_mlflow_ext.delivery.backoff import Backoff
from lightning_mlflow_ext.delivery.faults import Fault, classify_exception
from lightning_mlflow_ext.delivery.records import ArtifactOp
from lightning_mlflow_ext.delivery.worker import BackgroundWorker

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


#: Local work that turns one upload into the artifact changes it makes (hashing a checkpoint, writing its
#: metadata file); no network.
Prepare = Callable[[], list[ArtifactOp]]
#: Called on the worker once the store holds every change of a job (never for one handed to the journal).
Stored = Callable[[], None]
#: While a park waits for the worker's local work, how often it looks whether the worker is done or in a store call.
TAKE_OVER_POLL_S = 0.05


class ArtifactUploader:
    """Uploads one run's artifacts in a background thread, in the order they were queued.

    A change the store does not take is not dropped: a transient fault is retried with backoff; a run-wide fault
    or a bug, and whatever is still queued when the run ends (``park``), is handed to the run's writer as
    records (``hand_off``), which deliver it later or keep it in the journal, the staged bytes under
    ``save_dir``, for ``lightning-mlflow sync``.
    """

    def __init__(
        self,
        run_id: str,
        artifacts: RunArtifacts,
        staging: Path,
        hand_off: Callable[[list[ArtifactOp]], None],
        *,
        retry_delays: tuple[float, float] = (0.25, 10.0),
    ) -> None:
        self._run_id = run_id
        self._artifacts = artifacts
        self.staging = staging
        self._hand_off = hand_off
        self._retry_delays = retry_delays
        self._jobs: deque[tuple[str, Prepare, Stored | None]] = deque()  # guarded by _cond
        self._cond = threading.Condition()
        # Jobs are counted (queued, done) by the worker under _cond; its thread lowers its own CPU priority.
        self._worker = BackgroundWorker(f"mlflow-uploads-{run_id[:8]}", self._run, self._cond)
        self._report = UploadReport()  # guarded by _cond
        self._uploaded: dict[str, str] = {}  # artifact path -> sha256 last uploaded there (guarded by _cond)
        # Written and read on the worker only (a new worker starts only once the last one has ended).
        self._handing_off = False  # a run-wide fault or a bug: every change goes to the writer from now on
        self._parked = self._worker.stopping  # set by park(): what is left goes to the writer
        self._retry_now = threading.Event()
        self._current: list[ArtifactOp] = []  # what is left of the change being made (guarded by _cond)
        self._abandoned = False  # park() took the worker's current ops over (guarded by _cond)

    # ---- training-thread side ----------------------------------------------------------------

    def submit(self, description: str, prepare: Prepare, on_stored: Stored | None = None) -> None:
        """Queue a change: ``prepare`` runs on the worker and returns the artifact changes to make; ``on_stored``
        is called (on the worker) once the store holds them all."""
        with self._cond:
            self._jobs.append((description, prepare, on_stored))
            self._worker.add(1)
            self._cond.notify_all()

    def upload_with_metadata(
        self,
        local: Path,
        artifact_dir: str,
        metadata: dict[str, Any],
        *,
        rewrite: Callable[[Path], Path] | None = None,
        skip: Callable[[Path], str | None] | None = None,
        on_stored: Stored | None = None,
    ) -> None:
        """Upload a snapshot unless the run already holds the same bytes there, then a metadata JSON beside it
        (with the file's sha256 and size). ``metadata`` is copied: the caller may change its own dict at once.

        On the worker, before hashing: ``rewrite(snapshot)`` may make another staged file of the same name to
        upload instead (the snapshot is then removed); ``skip(file)`` may give a reason not to upload it, which
        the metadata JSON records as ``skipped``. ``on_stored`` is called once the store holds the file.
        """
        artifact_path = f"{artifact_dir}/{local.name}"
        metadata = dict(metadata)

        def prepare() -> list[ArtifactOp]:
            upload = _rewritten(local, rewrite)
            metadata["size"] = upload.stat().st_size
            reason = skip(upload) if skip is not None else None
            if reason is not None:
                remove_staged(upload)
                with self._cond:
                    self._uploaded.pop(artifact_path, None)
                skipped = {**metadata, "skipped": reason}
                return [self._stage_text(json.dumps(skipped, indent=2), artifact_path + ".json")]
            digest = sha256_of(upload)
            metadata["sha256"] = digest
            ops: list[ArtifactOp] = []
            with self._cond:
                unchanged = self._uploaded.get(artifact_path) == digest
                self._uploaded[artifact_path] = digest
            if unchanged:
                remove_staged(upload)
            else:
                ops.append(ArtifactOp("put", str(upload), artifact_dir))
            ops.append(self._stage_text(json.dumps(metadata, indent=2), artifact_path + ".json"))
            return ops

        self.submit(f"upload {artifact_path}", prepare, on_stored)

    def forget_upload(self, artifact_path: str) -> None:
        """The artifact was removed from the run: the next file there is uploaded whatever its bytes."""
        with self._cond:
            self._uploaded.pop(artifact_path, None)

    def upload_bytes(self, data: bytes, artifact_file: str) -> None:
        staged = self._staged(artifact_file)
        staged.write_bytes(data)
        self.upload_snapshot(staged, posixpath.dirname(artifact_file) or None)

    def upload_text(self, text: str, artifact_file: str) -> None:
        self.submit(f"write {artifact_file}", lambda: [self._stage_text(text, artifact_file)])

    def upload_snapshot(self, local: Path, artifact_dir: str | None) -> None:
        """Upload a snapshot (see ``snapshot``) into ``artifact_dir``; it is removed once the store has it."""
        op = ArtifactOp("put", str(local), artifact_dir)
        self.submit(op.describe(), lambda: [op])

    def delete(self, artifact_path: str, on_unsupported: Callable[[], None]) -> None:
        """Remove an artifact where the store supports it; otherwise call ``on_unsupported`` (on the worker)."""

        def prepare() -> list[ArtifactOp]:
            if not self._artifacts.can_delete:
                on_unsupported()
                return []
            return [ArtifactOp("delete", artifact_path)]

        self.submit(f"delete {artifact_path}", prepare)

    def log_image(self, image: Any, key: str | None, step: int | None, artifact_file: str | None) -> None:
        """An image (a numpy array) as ``artifact_file``, or as MLflow's step-keyed image files (the full PNG and
        the compressed WEBP the UI's image grid reads) when given ``key`` and ``step``. Written on the worker,
        stored like any file."""
        if artifact_file is not None:
            target = artifact_file

            def prepare() -> list[ArtifactOp]:
                staged = self._staged(target)
                convert_to_pil_image(image).save(staged)
                return [ArtifactOp("put", str(staged), posixpath.dirname(target) or None)]

            self.submit(f"log image {artifact_file}", prepare)
            return
        if key is None or not re.match(r"^[a-zA-Z0-9_\-./ ]+$", key):
            raise ValueError(
                f"image key {key!r}: MLflow's step-keyed images take alphanumerics, underscores, dashes, periods, "
                "spaces and slashes only"
            )
        # MLflow's own file names, so its UI shows the images by key and step.
        name = f"{key.replace('/', '~')}+step+{step or 0}+timestamp+{int(time.time() * 1000)}+{uuid.uuid4()}"

        def prepare_keyed() -> list[ArtifactOp]:
            picture = convert_to_pil_image(image)
            full = self._staged(name + ".png")
            picture.save(full)
            small = self._staged(name + "+compressed.webp")
            compress_image_size(picture).save(small)
            return [ArtifactOp("put", str(full), "images"), ArtifactOp("put", str(small), "images")]

        self.submit(f"log image {key} at step {step}", prepare_keyed)

    def log_table(self, write: Callable[[str], None], artifact_file: str) -> None:
        """A table: ``write(path)`` writes the whole table (see ``values.media.write_table``) on the worker."""

        def prepare() -> list[ArtifactOp]:
            staged = self._staged(artifact_file)
            write(str(staged))
            return [ArtifactOp("put", str(staged), posixpath.dirname(artifact_file) or None)]

        self.submit(f"log table {artifact_file}", prepare)

    def model_folder(self) -> Path:
        """Where to save an MLflow Model for ``log_model``: a path under staging that does not exist yet."""
        return self._staged("model")

    def log_model(self, folder: Path, details: Mapping[str, Any]) -> None:
        """Make a logged model of the MLflow Model saved in ``folder`` (from ``model_folder``), as
        ``delivery.logged_models.model_details`` describes it; the folder is removed once the store has it."""
        op = ArtifactOp("model", str(folder), None, dict(details))
        self.submit(op.describe(), lambda: [op])

    def log_checkpoint_model(
        self,
        local: Path,
        artifact_path: str,
        metadata: Mapping[str, Any],
        details: Mapping[str, Any],
        *,
        rewrite: Callable[[Path], Path] | None = None,
        skip: Callable[[Path], str | None] | None = None,
    ) -> None:
        """Make a logged model whose artifacts are the checkpoint snapshot ``local`` and its metadata JSON (with
        the file's sha256, the one its upload to ``artifact_path`` hashed when queued before this), as
        ``details`` describes it (``delivery.logged_models.model_details``, ``checkpoint=True``).
        ``rewrite`` and ``skip`` as for ``upload_with_metadata``: a file the run does not get makes no model."""
        metadata = dict(metadata)
        details = dict(details)

        def prepare() -> list[ArtifactOp]:
            upload = _rewritten(local, rewrite)
            if skip is not None and skip(upload) is not None:
                remove_staged(upload)
                return []
            folder = self._staged("checkpoint")
            folder.mkdir()
            target = folder / local.name
            os.replace(upload, target)
            with self._cond:
                digest = self._uploaded.get(artifact_path)
            metadata["sha256"] = digest or sha256_of(target)
            (folder / (local.name + ".json")).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
            return [ArtifactOp("model", str(folder), None, details)]

        self.submit(f"log model {details.get('name', '?')}", prepare)

    def delete_model(self, change_id: str, experiment_id: str, name: str) -> None:
        """Remove the logged model the ``model`` change ``change_id`` made (queued after it, so made after it)."""
        op = ArtifactOp("delete_model", change_id, None, {"experiment_id": experiment_id, "name": name})
        self.submit(op.describe(), lambda: [op])

    def _staged(self, artifact_file: str) -> Path:
        """A fresh file in a folder of its own under staging, named like ``artifact_file``."""
        staged = self.staging / uuid.uuid4().hex / posixpath.basename(artifact_file)
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def _stage_text(self, text: str, artifact_file: str) -> ArtifactOp:
        staged = self._staged(artifact_file)
        staged.write_text(text, encoding="utf-8")
        return ArtifactOp("put", str(staged), posixpath.dirname(artifact_file) or None)

    # ---- waiting ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> UploadReport:
        """Wait until every queued change is made or handed to the writer, at most ``timeout`` seconds."""
        self._retry_now.set()  # a backoff in progress is cut short: the store may be back
        with self._cond:
            target = self._worker.queued
        self._worker.wait_done(target, timeout)
        with self._cond:
            report, self._report = self._report, UploadReport()
            report.pending = self._worker.queued - self._worker.done
        return report

    def park(self, timeout: float) -> None:
        """Stop uploading: every change still queued is handed to the writer (nothing is dropped), in order. An
        upload in flight that does not stop within ``timeout`` seconds is cut off and handed over too.

        Local work the worker is doing (rendering an image, writing a table, hashing a checkpoint, handing a
        change over) is waited for, however long it takes: what it makes exists only once it is done, so a
        park that returned before would leave it to a thread the process may end with (the change lost), and
        let the changes queued after it reach the writer before it (an older table over a newer one)."""
        if not self._worker.stop(timeout, self._interrupt):
            self._take_over()

    def _interrupt(self) -> None:
        """Cut short what the worker may be blocked in: a backoff, an upload in flight."""
        self._retry_now.set()
        self._artifacts.abort()

    def _take_over(self) -> None:
        """The worker did not stop in time. This thread prepares every queued change (the worker, at a lower CPU
        priority, would take longer on a busy machine) and hands them over after the one the worker is on.

        That one is handed over by the worker once its local work is done (preparing the change, handing it
        over), which is waited for: what it makes exists only then, and it must reach the writer first. If the
        worker is in a store call meanwhile (an upload that cannot be cut off), the rest of its change is taken
        from it and handed over from here, first; the worker then drops it. A change made twice is harmless (a
        file put again overwrites itself)."""
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            self._worker.count_done(len(jobs))
        queued: list[ArtifactOp] = []
        for description, job, _ in jobs:  # handed to the journal: never "stored" here
            try:
                queued.extend(job())
            except Exception as exc:
                log.warning("MLflow run %s: could not %s: %s", self._run_id, description, exc)
        with self._cond:
            while self._worker.running and not self._current:
                self._cond.wait(TAKE_OVER_POLL_S)
            taken = list(self._current) if self._worker.running else []
            self._abandoned = bool(taken)
        if taken:
            log.warning("MLflow run %s: an upload did not stop in time; it is handed to the journal", self._run_id)
        if taken or queued:
            self._hand_off(taken + queued)

    # ---- worker side --------------------------------------------------------------------------

    def _run(self) -> None:
        yield_to_training()
        while True:
            with self._cond:
                if not self._jobs and not self._parked.is_set():
                    self._cond.wait_for(lambda: bool(self._jobs) or self._parked.is_set(), timeout=30)
                if not self._jobs:
                    self._worker.retire()  # idle, or parked with nothing left: the next submit starts a new worker
                    return
                description, job, on_stored = self._jobs.popleft()
            try:
                ops = job()  # local work: a change still here when park() takes over is handed over below
                with self._cond:
                    self._current = ops
                if self._make(ops) and on_stored is not None:
                    on_stored()
            except Exception as exc:  # local work failed (a file gone, a full disk): the ones after it go on
                log.warning("MLflow run %s: could not %s: %s", self._run_id, description, exc)
                with self._cond:
                    self._report.failed.append(f"{description}: {exc}")
            self._worker.mark_done(1)

    def _make(self, ops: list[ArtifactOp]) -> bool:
        """Make ``ops`` in order (``_current`` already holds them); hand what is left to the writer once one
        cannot be made. True when the store holds them all."""
        stored = True
        for index, op in enumerate(ops):
            with self._cond:
                if self._abandoned:  # park() handed the rest over meanwhile
                    self._abandoned = False
                    self._current = []
                    return False
                self._current = ops[index:]
            outcome = "handed_off" if self._handing_off or self._parked.is_set() else self._apply(op)
            with self._cond:
                self._current = []
                if self._abandoned:  # park() handed this over meanwhile
                    self._abandoned = False
                    return False
            if outcome == "handed_off":
                self._hand_off(ops[index:])
                return False
            stored = stored and outcome == "stored"
        return stored

    def _apply(self, op: ArtifactOp) -> Literal["stored", "refused", "handed_off"]:
        """Make one change, retrying transient faults: stored, refused for good, or to go to the writer."""
        backoff = Backoff(self._retry_delays, self._parked, self._retry_now)
        while True:
            try:
                self._artifacts.apply(op)
                return "stored"
            except Exception as raw:
                fault = classify_exception(self._artifacts.tracking_uri, raw)
            if fault.fault is Fault.ONE_RECORD:
                log.warning("MLflow run %s: could not %s: %s", self._run_id, op.describe(), fault)
                with self._cond:
                    self._report.failed.append(f"{op.describe()}: {fault}")
                return "refused"  # for good: nothing to keep
            if fault.fault is not Fault.TRANSIENT:
                self._handing_off = True  # the writer says what happened, once, and journals the rest
                return "handed_off"
            if self._parked.is_set() or not backoff.wait(fault):
                return "handed_off"


def _rewritten(local: Path, rewrite: Callable[[Path], Path] | None) -> Path:
    """The file to upload for the staged ``local``: ``rewrite(local)`` when given (``local`` is then removed)."""
    if rewrite is None:
        return local
    upload = rewrite(local)
    if upload != local:
        remove_staged(local)
    return upload
