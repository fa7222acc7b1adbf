"""At the end of a successful fit: the best checkpoint's model as an MLflow Model of the run.

Chosen from the first ``ModelCheckpoint`` that saved a best checkpoint, loaded on the CPU, logged (and
registered under ``registered_model_name`` with the alias ``best``) with the global step its checkpoint was
saved at, a signature and input example (``model_example``), and the scores it was saved with linked to it as
metrics (``checkpoint_scores``).
The model is saved here; the run's delivery logs and registers it (it survives an outage like every write).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.delivery.logged_models import as_checkpoint_model
from lightning_mlflow_ext.run.models import BEST_ALIAS, save_best_model
from lightning_mlflow_ext.run.tags import REGISTERED_MODEL_TAG
from lightning_mlflow_ext.trainer.checkpoint_files import epoch_and_step
from lightning_mlflow_ext.trainer.checkpoint_scores import CheckpointScores
from lightning_mlflow_ext.trainer.model_example import InputExample
from lightning_mlflow_ext.trainer.namespaces import model_checkpoint_types

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.trainer.checkpoint_models import CheckpointModels
    from lightning_mlflow_ext.trainer.checkpoints import CheckpointMirror
    from lightning_mlflow_ext.trainer.metrics import MetricPipeline
    from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)


def _saved_step(path: str, default: int) -> int:
    """The global step the checkpoint at ``path`` was saved at (not where the fit ended), else ``default``."""
    step = epoch_and_step(path)[1]
    return default if step is None else step


class BestModelExport:
    """The best model of each fit: what it watches while the fit runs (the checkpoints saved and their scores, the
    first training batch), then ``record_best_model()`` when the fit ends.

    ``signature`` / ``input_example``: give the model a signature / an input example (``model_example``).
    """

    def __init__(
        self,
        session: RunSession,
        warn_once: WarnOnce,
        registered_model_name: str | None,
        metrics: MetricPipeline,
        *,
        signature: bool = True,
        input_example: bool = True,
    ) -> None:
        self._session = session
        self._warn_once = warn_once
        self._registered_model_name = registered_model_name
        self._scores = CheckpointScores(metrics.recorded_name)
        metrics.listeners.append(self._scores.points_sent)
        self._example = InputExample() if signature or input_example else None
        self._signature = signature
        self._input_example = input_example

    # ---- while the fit runs -----------------------------------------------------------------------

    def start_fit(self) -> None:
        self._scores.start_fit()
        if self._example is not None:
            self._example.start_fit()

    def note_train_batch(self, batch: Any) -> None:
        if self._example is not None:
            self._example.note_batch(batch)

    def checkpoint_saved(self, callback: ModelCheckpoint, trainer: pl.Trainer | None) -> None:
        if trainer is not None:
            self._scores.checkpoint_saved(callback, trainer.callback_metrics)

    # ---- when it ends -------------------------------------------------------------------------------

    def record_best_model(
        self,
        trainer: pl.Trainer | None,
        mirror: CheckpointMirror | None,
        checkpoint_models: CheckpointModels | None = None,
    ) -> None:
        """Save the best checkpoint's model for the run's delivery. ``mirror``: set when checkpoints are uploaded
        (the model then names the run's copy of its checkpoint). ``checkpoint_models``: set when each uploaded
        checkpoint is a logged model; the best checkpoint's own logged model then becomes the best model (its
        MLflow Model files are added to it, and it is the one registered), rather than a second model."""
        if trainer is None or trainer.state.fn != "fit":
            return
        checkpoints = model_checkpoint_types()
        best = next(
            (cb for cb in trainer.checkpoint_callbacks if isinstance(cb, checkpoints) and cb.best_model_path), None
        )
        if best is None:
            self._warn_once("no-best", "log_best_model: no ModelCheckpoint saved a checkpoint; no model logged.")
            return
        try:
            module = type(trainer.lightning_module).load_from_checkpoint(best.best_model_path, map_location="cpu")
            declared = getattr(trainer.lightning_module, "example_input_array", None)
            example = self._example.pair(module, declared) if self._example is not None else None
            metrics = self._scores.scores(best)
            if not metrics:
                log.info(
                    "No metric of the run is linked to the best model: its checkpoint %s was saved before this fit, "
                    "or judged by metrics not sent to MLflow.",
                    best.best_model_path,
                )
            # The checkpoint in the run when checkpoints are uploaded (log_model), else the local file it came from.
            checkpoint = (
                f"checkpoints/{mirror.key_for(best)}/{os.path.basename(best.best_model_path)}"
                if mirror is not None
                else Path(os.path.abspath(best.best_model_path)).as_uri()
            )
            folder = self._session.uploader.model_folder()
            details = save_best_model(
                module,
                folder,
                experiment_id=self._session.experiment_id,
                checkpoint_artifact=checkpoint,
                step=_saved_step(best.best_model_path, trainer.global_step),
                metrics=metrics,
                example=example,
                signature=self._signature,
                input_example=self._input_example,
                registered_model_name=self._registered_model_name,
            )
        except Exception as exc:  # the fit succeeded; a model that could not be saved must not undo that
            log.warning("Could not save the best checkpoint %s as an MLflow Model: %s", best.best_model_path, exc)
            return
        own = checkpoint_models.change_id_of(best.best_model_path) if checkpoint_models is not None else None
        if own is not None:
            details = as_checkpoint_model(details, own)
        # Logged and registered in the background, like every write; the model's id reaches the run's tags then.
        self._session.uploader.log_model(folder, details)
        if self._registered_model_name:
            self._session.set_tags({REGISTERED_MODEL_TAG: f"{self._registered_model_name}@{BEST_ALIAS}"})
