"""What of each checkpoint goes into the run: ``CheckpointUploadPolicy``, the user's ``log_model_options``.

A budget for the artifact store: weights-only copies, a size limit, names left out, and local copies removed once
the store has them. Plain values, checked when the logger is made, so a typo fails before any training.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from lightning_mlflow_ext.values.sizes import parse_size

__all__ = ["CheckpointUploadPolicy"]


@dataclass(frozen=True)
class CheckpointUploadPolicy:
    """How ``log_model`` uploads checkpoints (``MLflowLogger(log_model_options=...)``).

    Example::

        MLflowLogger(
            log_model="all",
            log_model_options=CheckpointUploadPolicy(weights_only=True, max_size="500MB", exclude=["*last*.ckpt"]),
        )

    Args:
        weights_only: upload a copy holding only the model's ``state_dict`` and what ``load_from_checkpoint``
            needs to build the module again (its hyperparameters, epoch, global step, Lightning version): no
            optimizer states, loops or callback states. The copy is made in the background under
            ``save_dir/.mlflow-uploads``; the local checkpoint is never changed. ``load_model`` loads it; a fit
            cannot resume from it.
        max_size: a checkpoint larger than this (bytes, or a text like ``"500MB"`` / ``"2GiB"``), as it would be
            uploaded (the weights-only copy with ``weights_only``), is not uploaded: one warning names the file,
            and the run's tag ``lightning_mlflow_ext.checkpoints_skipped`` (and the metadata JSON beside where it
            would be) says why it is missing.
        exclude: glob patterns (``fnmatch``: ``*`` also matches ``/``) on a checkpoint's file name or its path
            relative to its callback's ``dirpath``; a match is not uploaded (``["*last*.ckpt"]``).
        delete_local_after_upload: remove a local checkpoint once the store has confirmed it holds it (not when
            it was only kept in the journal for a later ``sync``). Each callback's ``best_model_path`` and
            ``last_model_path`` stay on disk: Lightning reads them again (``trainer.test(ckpt_path="best")``,
            ``log_best_model``, resuming with ``ckpt_path="last"``). The others (older top-k and periodic
            checkpoints) then exist only in the run: resuming from one means ``load_checkpoint`` first.
    """

    weights_only: bool = False
    max_size: int | str | None = None
    exclude: Sequence[str] = ()
    delete_local_after_upload: bool = False

    def __post_init__(self) -> None:
        for name in ("weights_only", "delete_local_after_upload"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"log_model_options {name} must be True or False, got {getattr(self, name)!r}")
        if self.max_size is not None:
            parse_size(self.max_size, what="log_model_options max_size")
        patterns = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        bad = [p for p in patterns if not isinstance(p, str) or not p]
        if bad:
            raise ValueError(f"log_model_options exclude takes glob patterns such as '*last*.ckpt', got {bad!r}")
        object.__setattr__(self, "exclude", patterns)

    @classmethod
    def of(cls, value: CheckpointUploadPolicy | Mapping[str, Any] | None) -> CheckpointUploadPolicy:
        """The policy from ``log_model_options=``: a policy, a dict of its fields (a YAML config), or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"log_model_options has no option {unknown}; the options are {sorted(known)}")
            return cls(**value)
        raise ValueError(f"log_model_options must be a CheckpointUploadPolicy or a dict, got {value!r}")

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_size is None else parse_size(self.max_size)

    @property
    def changes_uploads(self) -> bool:
        """Whether anything differs from uploading every checkpoint as it is."""
        return self != CheckpointUploadPolicy()

    def excludes(self, path: str, dirpath: str | os.PathLike[str] | None) -> bool:
        """Whether the checkpoint at ``path`` (saved by a callback writing into ``dirpath``) is left out."""
        if not self.exclude:
            return False
        names = [os.path.basename(path)]
        if dirpath is not None:
            names.append(os.path.relpath(path, dirpath).replace(os.sep, "/"))
        return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.exclude)
