"""Which checkpoints go into the run, and when: Lightning's ``log_model`` modes over a ``CheckpointMirror``.

``"all"`` (or ``True`` with ``save_top_k=-1``) mirrors each checkpoint as it is saved; ``True`` mirrors what
every ``ModelCheckpoint`` holds at the end of the fit, and a failed fit's set is tagged partial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from lightning_mlflow_ext.run.tags import PARTIAL_TAG
from lightning_mlflow_ext.trainer.checkpoint_budget import CheckpointBudget
from lightning_mlflow_ext.trainer.checkpoint_files import last_saved_file
from lightning_mlflow_ext.trainer.checkpoint_models import CheckpointModels
from lightning_mlflow_ext.trainer.checkpoint_policy import CheckpointUploadPolicy
from lightning_mlflow_ext.trainer.checkpoints import CheckpointMirror, SaveLog
from lightning_mlflow_ext.trainer.namespaces import model_checkpoint_types

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_mlflow_ext.run.session import FinalStatus, RunSession
    from lightning_mlflow_ext.warn_once import WarnOnce


class CheckpointUploads:
    """The ``log_model`` policy of one logger (with its ``log_model_options``), and the mirror it keeps (made at
    the first upload)."""

    def __init__(
        self,
        session: RunSession,
        log_model: bool | Literal["all"],
        options: CheckpointUploadPolicy,
        warn_once: WarnOnce,
        *,
        as_models: bool = True,
    ) -> None:
        self._session = session
        self._log_model = log_model
        self._options = options
        self._warn_once = warn_once
        self._mirror: CheckpointMirror | None = None
        self._dataset_digests: dict[str, str] = {}  # split -> digest, recorded in each checkpoint's metadata
        self._saves = SaveLog()  # the epoch and step of each file, noted when it is saved
        #: Each uploaded checkpoint a logged model, with its epoch's metrics linked (None without uploads).
        self.models = CheckpointModels(session) if log_model and as_models else None

    @property
    def mirror(self) -> CheckpointMirror | None:
        """The mirror, once a checkpoint was uploaded (the best model then points at the run's copy)."""
        return self._mirror

    def note_datasets(self, digests: Mapping[str, str]) -> None:
        """The data the fit reads, so a checkpoint's metadata says which data it was trained on."""
        self._dataset_digests.update(digests)
        if self.models is not None:
            self.models.note_datasets(digests)

    def after_save(self, callback: ModelCheckpoint, trainer: pl.Trainer | None) -> None:
        if trainer is not None:
            self._saves.note(callback, trainer.current_epoch, trainer.global_step)
        saved = last_saved_file(callback)
        if self.models is not None and saved is not None:
            self.models.note_save(saved)
        if self._log_model == "all" or (self._log_model is True and callback.save_top_k == -1):
            self._mirror_checkpoints([callback], trainer)

    def finish(self, trainer: pl.Trainer | None, final: FinalStatus) -> None:
        """Upload what the checkpoint callbacks hold now (log_model=True); the waiting is the stage end's."""
        if not self._log_model or trainer is None or trainer.state.fn != "fit":
            return
        self._mirror_checkpoints(
            [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, model_checkpoint_types())], trainer
        )
        if final != "FINISHED":
            self._session.set_tags({PARTIAL_TAG: "true"})  # a failed fit: what was saved, not a full set

    def _mirror_checkpoints(self, callbacks: list[ModelCheckpoint], trainer: pl.Trainer | None) -> None:
        if self._mirror is None:
            budget = (
                CheckpointBudget(self._options, self._session.set_tags, self._warn_once)
                if self._options.changes_uploads
                else None
            )
            self._mirror = CheckpointMirror(self._session.uploader, self._session.set_tags, budget, self.models)
        for callback in callbacks:
            self._mirror.sync(callback, self._saves, dataset_digests=dict(self._dataset_digests))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mirror"] = None  # it holds the uploader's jobs; a copy in another process starts its own
        return state
