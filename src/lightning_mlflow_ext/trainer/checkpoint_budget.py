"""A ``CheckpointUploadPolicy`` at work for one logger's mirror: weights-only copies, files over the size limit
recorded as skipped, and local checkpoints removed once the store holds them.

The copies and the size checks run on the uploader's worker; the training thread only says which files
Lightning still needs (each callback's best and last).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_mlflow_ext.delivery.uploader import Stored
from lightning_mlflow_ext.run.tags import CHECKPOINTS_SKIPPED_TAG, MAX_TAG_VALUE
from lightning_mlflow_ext.trainer.checkpoint_policy import CheckpointUploadPolicy
from lightning_mlflow_ext.values.names import truncate_value
from lightning_mlflow_ext.values.sizes import format_size
from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)

#: What a weights-only copy keeps of a Lightning checkpoint: the weights, and what ``load_from_checkpoint`` needs to
#: build the module (and its DataModule) again and to tell which save it was. Everything else (optimizer and
#: scheduler states, loops, callbacks, precision plugin, a module's own ``on_save_checkpoint`` extras) is left out.
WEIGHTS_ONLY_KEYS = (
    "state_dict",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "hparams_name",
    "hyper_parameters",
    "hparams_type",
    "datamodule_hparams_name",
    "datamodule_hyper_parameters",
    "datamodule_hparams_type",
)

#: A local file as it was when it was snapshotted: (device, inode, mtime_ns, size).
FileIdentity = tuple[int, int, int, int]


def file_identity(path: str) -> FileIdentity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def weights_only_copy(snapshot: Path) -> Path:
    """A new staged file named like ``snapshot`` holding `WEIGHTS_ONLY_KEYS` of the checkpoint in it.

    Written beside the snapshot's folder, never over it: the snapshot is a hard link to the user's checkpoint.
    The file is this fit's own (or the user's own folder's), so it is unpickled as Lightning loads it.
    """
    import torch

    try:
        checkpoint = torch.load(snapshot, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip archive (the legacy format cannot be memory-mapped)
        checkpoint = torch.load(snapshot, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise ValueError("not a Lightning checkpoint (no state_dict)")
    kept = {key: checkpoint[key] for key in WEIGHTS_ONLY_KEYS if key in checkpoint}
    target = snapshot.parent.parent / uuid.uuid4().hex / snapshot.name
    target.parent.mkdir(parents=True)
    torch.save(kept, target)
    return target


class CheckpointBudget:
    """One logger's ``log_model_options``: what the uploader is told for each checkpoint it mirrors."""

    def __init__(
        self, policy: CheckpointUploadPolicy, set_tags: Callable[[Mapping[str, str]], None], warn_once: WarnOnce
    ) -> None:
        self.policy = policy
        self._set_tags = set_tags
        self._warn_once = warn_once
        self._max_bytes = policy.max_bytes
        self._lock = threading.Lock()
        self._skipped: dict[str, str] = {}  # artifact path -> why it is not in the run (guarded by _lock)
        self._needed: dict[str, set[str]] = {}  # callback key -> real paths Lightning reads again (guarded)
        self._stored: dict[str, FileIdentity] = {}  # local path the store holds -> as uploaded (guarded)

    def upload_rules(self, local: str, artifact_path: str, identity: FileIdentity | None) -> dict[str, Any]:
        """The keyword arguments of ``ArtifactUploader.upload_with_metadata`` for the checkpoint at ``local``."""
        rules: dict[str, Any] = {}
        if self._max_bytes is not None:
            rules["skip"] = self._size_check(local, artifact_path, self._max_bytes)
        if self.policy.weights_only:
            rules["rewrite"] = self._weights_only(local)
        if self.policy.delete_local_after_upload and identity is not None:
            rules["on_stored"] = self._stored_callback(local, identity)
        return rules

    # ---- weights only --------------------------------------------------------------------------------

    def _weights_only(self, local: str) -> Callable[[Path], Path]:
        def rewrite(snapshot: Path) -> Path:
            try:
                return weights_only_copy(snapshot)
            except Exception as exc:  # nothing is lost by uploading the whole file
                self._warn_once(
                    f"weights-only:{local}",
                    f"log_model_options weights_only: could not make a weights-only copy of {local} ({exc}); "
                    "the whole checkpoint is uploaded.",
                )
                return snapshot

        return rewrite

    # ---- size limit ------------------------------------------------------------------------------

    def _size_check(self, local: str, artifact_path: str, limit: int) -> Callable[[Path], str | None]:
        def skip(upload: Path) -> str | None:
            size = upload.stat().st_size
            if size <= limit:
                self._record_skip(artifact_path, None)  # uploaded after all (a smaller save of the same name)
                return None
            what = "its weights-only copy is" if self.policy.weights_only else "it is"
            reason = f"{format_size(size)} ({size} bytes), over log_model_options max_size={self.policy.max_size!r}"
            self._warn_once(
                f"too-large:{artifact_path}",
                f"Checkpoint {local} is not uploaded to the MLflow run: {what} {format_size(size)} ({size} bytes), "
                f"over log_model_options max_size={self.policy.max_size!r} ({limit} bytes). The run's tag "
                f"{CHECKPOINTS_SKIPPED_TAG} records it; raise max_size, or try weights_only=True.",
            )
            self._record_skip(artifact_path, reason)
            return reason

        return skip

    def _record_skip(self, artifact_path: str, reason: str | None) -> None:
        with self._lock:
            if self._skipped.get(artifact_path) == reason:
                return
            if reason is None:
                self._skipped.pop(artifact_path)
            else:
                self._skipped[artifact_path] = reason
            text = "\n".join(f"{path}: {why}" for path, why in sorted(self._skipped.items()))
        value, _ = truncate_value(text or "none", MAX_TAG_VALUE)
        self._set_tags({CHECKPOINTS_SKIPPED_TAG: value})

    # ---- local copies removed once stored ----------------------------------------------------------

    def still_needed(self, callback_key: str, paths: list[str]) -> None:
        """The files of a callback Lightning reads again (best, last): kept. A stored file that no longer is one
        (an older best) is removed now."""
        if not self.policy.delete_local_after_upload:
            return
        with self._lock:
            self._needed[callback_key] = {os.path.realpath(p) for p in paths if p}
            needed = set().union(*self._needed.values())
            free = {p: i for p, i in self._stored.items() if os.path.realpath(p) not in needed}
            for path in free:
                del self._stored[path]
        for path, identity in free.items():
            self._remove(path, identity)

    def _stored_callback(self, local: str, identity: FileIdentity) -> Stored:
        def stored() -> None:
            with self._lock:
                needed = os.path.realpath(local) in set().union(*self._needed.values())
                if needed:
                    self._stored[local] = identity
            if not needed:
                self._remove(local, identity)

        return stored

    def _remove(self, local: str, identity: FileIdentity) -> None:
        if file_identity(local) != identity:
            return  # saved again (or removed) since: not the file the store holds
        try:
            os.remove(local)
        except OSError as exc:
            self._warn_once(
                f"remove:{local}", f"log_model_options delete_local_after_upload: could not remove {local}: {exc}"
            )
            return
        log.info("Removed the local checkpoint %s: the MLflow run holds it", local)
