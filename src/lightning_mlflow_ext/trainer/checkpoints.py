"""Mirrors the files of every ``ModelCheckpoint`` into the run, under ``checkpoints/<callback key>/``.

Each file gets a metadata JSON beside it (with the epoch and global step the file was saved at, which
`SaveLog` remembers); files Lightning prunes are removed (or marked stale) in the run.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.uploader import ArtifactUploader, snapshot
from lightning_mlflow_ext.run.tags import CHECKPOINTS_ROOT, checkpoint_tag
from lightning_mlflow_ext.trainer.checkpoint_budget import CheckpointBudget, file_identity
from lightning_mlflow_ext.trainer.checkpoint_files import epoch_and_step, last_saved_file

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_mlflow_ext.trainer.checkpoint_models import CheckpointModels


def callback_key(callback: ModelCheckpoint) -> str:
    """A stable, readable key per callback: what it monitors, else how often it saves."""
    if callback.monitor:
        base = callback.monitor
    elif callback._every_n_train_steps:
        base = f"every-{callback._every_n_train_steps}-steps"
    elif callback._every_n_epochs and callback._every_n_epochs != 1:
        base = f"every-{callback._every_n_epochs}-epochs"
    else:
        base = "latest"
    return re.sub(r"[^\w.\-]+", "_", base)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class SaveLog:
    """The epoch and global step each checkpoint file was saved at, as Lightning reports each save.

    Lightning calls ``after_save_checkpoint`` right after writing a file, while the trainer is still at the
    epoch and step it wrote into that file; a file uploaded later (``log_model=True`` uploads at the end of
    the fit) keeps those, not the trainer's values by then. A file this process did not see saved (one from
    before a resume, or ``save_last="link"``'s link, which Lightning does not report) is read for them.
    """

    def __init__(self) -> None:
        self._saved: dict[str, tuple[tuple[int, int], int, int]] = {}  # real path -> (stat, epoch, step)

    def note(self, callback: ModelCheckpoint, epoch: int, global_step: int) -> None:
        """After ``callback`` saved a file: remember the trainer's epoch and step for it."""
        path = last_saved_file(callback)
        stat = _stat(path) if path is not None else None
        if path and stat is not None:
            self._saved[os.path.realpath(path)] = (stat, epoch, global_step)

    def saved_at(self, path: str, stat: tuple[int, int]) -> tuple[int | None, int | None]:
        """``(epoch, global_step)`` of the file at ``path`` as it is now (``stat``); None for what is unknown."""
        known = self._saved.get(os.path.realpath(path))
        if known is not None and known[0] == stat:
            return known[1], known[2]
        return epoch_and_step(path)


@dataclass
class MirroredFile:
    artifact_path: str
    stat: tuple[int, int]  # (mtime_ns, size) of the local file when it was snapshotted
    metadata: dict[str, Any] = field(default_factory=dict)


class CheckpointMirror:
    """What of each callback's files is in the run, and the jobs that keep it in step (within ``budget``, the
    logger's ``log_model_options``, when one is given)."""

    def __init__(
        self,
        uploader: ArtifactUploader,
        set_tags: Any,
        budget: CheckpointBudget | None = None,
        models: CheckpointModels | None = None,
    ) -> None:
        self._uploader = uploader
        self._set_tags = set_tags
        self._budget = budget
        self._models = models  # each file a logged model too (MLflow 3)
        self._keys: dict[str, str] = {}  # callback identity -> key
        self._files: dict[str, MirroredFile] = {}  # local path -> what is in the run

    def key_for(self, callback: ModelCheckpoint) -> str:
        identity = f"{callback.dirpath}|{callback.state_key}"
        if identity not in self._keys:
            key = callback_key(callback)
            taken = set(self._keys.values())
            n = 2
            while key in taken:
                key = f"{callback_key(callback)}-{n}"
                n += 1
            self._keys[identity] = key
        return self._keys[identity]

    def sync(self, callback: ModelCheckpoint, saves: SaveLog, dataset_digests: dict[str, str]) -> None:
        """Bring the run in step with the callback's files now: upload new or changed ones, drop pruned ones."""
        key = self.key_for(callback)
        wanted = {
            path for path in [*callback.best_k_models, callback.last_model_path, callback.best_model_path] if path
        }
        budget = self._budget
        if budget is not None:
            # Before any upload is queued: a file whose upload lands is removed only if Lightning no longer needs it.
            budget.still_needed(key, [callback.best_model_path, callback.last_model_path])
        for path in sorted(wanted):
            if not os.path.exists(path) or (budget is not None and budget.policy.excludes(path, callback.dirpath)):
                continue
            stat = os.stat(path)
            current = (stat.st_mtime_ns, stat.st_size)
            known = self._files.get(path)
            if known is not None and known.stat == current:
                continue
            artifact_dir = f"{CHECKPOINTS_ROOT}/{key}"
            score = callback.best_k_models.get(path)
            epoch, global_step = saves.saved_at(path, current)
            metadata = {
                "file": os.path.basename(path),
                "callback": key,
                "monitor": callback.monitor,
                "mode": callback.mode,
                "score": None if score is None else float(score),
                "epoch": epoch,
                "global_step": global_step,
                "size": stat.st_size,
                "dataset_digests": dataset_digests,
                "saved_at": int(time.time() * 1000),
                "stale": False,
            }
            artifact_path = f"{artifact_dir}/{os.path.basename(path)}"
            self._files[path] = MirroredFile(artifact_path, current, metadata)
            identity = file_identity(path)
            staged = snapshot(path, self._uploader.staging, link=True)
            rules = {} if budget is None else budget.upload_rules(path, artifact_path, identity)
            if budget is not None and budget.policy.weights_only:
                metadata["weights_only"] = True
            self._uploader.upload_with_metadata(staged, artifact_dir, metadata, **rules)
            if self._models is not None:
                own = snapshot(path, self._uploader.staging, link=True)
                last = path == callback.last_model_path
                self._models.mirrored(
                    path, own, artifact_path, metadata, last=last, rewrite=rules.get("rewrite"), skip=rules.get("skip")
                )
        folder = f"{CHECKPOINTS_ROOT}/{key}/"
        for path in [p for p, f in self._files.items() if p not in wanted and f.artifact_path.startswith(folder)]:
            if os.path.exists(path):
                continue  # still on disk (e.g. saved by hand): keep it in the run too
            self._forget(path)
        self._tag(callback, key)

    def _forget(self, path: str) -> None:
        mirrored = self._files.pop(path)
        self._uploader.forget_upload(mirrored.artifact_path)
        stale = {**mirrored.metadata, "stale": True}  # a copy: the worker writes it, this thread moves on

        def mark_stale() -> None:
            self._uploader.upload_text(json.dumps(stale, indent=2), mirrored.artifact_path + ".json")

        self._uploader.delete(mirrored.artifact_path, on_unsupported=mark_stale)
        self._uploader.delete(mirrored.artifact_path + ".json", on_unsupported=lambda: None)
        if self._models is not None:
            self._models.forget(path, mirrored.metadata)

    def _tag(self, callback: ModelCheckpoint, key: str) -> None:
        tags: dict[str, str] = {}
        best = self._files.get(callback.best_model_path) if callback.best_model_path else None
        if best is not None:
            tags[checkpoint_tag(key, "best")] = best.artifact_path
            if callback.best_model_score is not None:
                tags[checkpoint_tag(key, "best_score")] = repr(float(callback.best_model_score))
        latest = max(
            (f for p, f in self._files.items() if f.artifact_path.startswith(f"{CHECKPOINTS_ROOT}/{key}/")),
            key=lambda f: f.metadata["saved_at"],
            default=None,
        )
        if latest is not None:
            tags[checkpoint_tag(key, "latest")] = latest.artifact_path
        if tags and callback.monitor:
            tags[checkpoint_tag(key, "monitor")] = callback.monitor  # "best" means this callback's best
        if tags:
            self._set_tags(tags)
