"""``mlflow.pytorch.autolog()``'s checkpoints, in its places: what ``mlflow.pytorch.load_checkpoint`` reads.

``checkpoints/latest_checkpoint.pth`` (overwritten by a better one) with ``latest_checkpoint_metrics.json`` when
only the best is kept, else ``checkpoints/epoch_<n>/checkpoint.pth`` (or ``global_step_<n>/``) each time; a
``.weights`` infix for weights-only checkpoints; the run's ``mlflow.latest_checkpoint_artifact`` tag names the
last one. Saved on global rank 0 and uploaded in the background like every artifact of the run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.trainer.logger import MLflowLogger

log = logging.getLogger(__name__)

#: MLflow's ``mlflow.utils.mlflow_tags.LATEST_CHECKPOINT_ARTIFACT_TAG_KEY``.
LATEST_CHECKPOINT_TAG = "mlflow.latest_checkpoint_artifact"
SaveFreq = Literal["epoch"] | int


class AutologCheckpoints:
    """When and where a checkpoint is saved, with ``mlflow.pytorch.autolog``'s ``checkpoint_*`` options."""

    def __init__(
        self,
        monitor: str | None = "val_loss",
        mode: str = "min",
        save_best_only: bool = True,
        save_weights_only: bool = False,
        save_freq: SaveFreq = "epoch",
    ) -> None:
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"checkpoint_save_freq must be 'epoch' or a positive number of steps, got {save_freq!r}")
        if save_best_only and not monitor:
            raise ValueError("checkpoint_save_best_only=True compares a metric: pass checkpoint_monitor too.")
        if save_best_only and mode not in ("min", "max"):
            raise ValueError(f"checkpoint_mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self._best: float | None = None
        self._warned = False

    def reset(self) -> None:
        self._best = None

    def on_step(self, trainer: pl.Trainer, logger: MLflowLogger) -> None:
        step = trainer.global_step
        if isinstance(self.save_freq, int) and step > 0 and step % self.save_freq == 0:
            self._maybe_save(trainer, logger)

    def on_epoch(self, trainer: pl.Trainer, logger: MLflowLogger) -> None:
        if self.save_freq == "epoch":
            self._maybe_save(trainer, logger)

    def _maybe_save(self, trainer: pl.Trainer, logger: MLflowLogger) -> None:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if self.save_best_only:
            if self.monitor not in metrics:
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "autolog checkpoint: the monitored metric %r is not logged, so no checkpoint is saved; "
                        "pass checkpoint_monitor= a metric your module logs, or checkpoint_save_best_only=False.",
                        self.monitor,
                    )
                return
            value = metrics[str(self.monitor)]
            if self._best is not None and not (value < self._best if self.mode == "min" else value > self._best):
                return
            self._best = value
        self._save(trainer, logger, metrics)

    def _save(self, trainer: pl.Trainer, logger: MLflowLogger, metrics: dict[str, float]) -> None:
        model_file = "checkpoint" + (".weights" if self.save_weights_only else "") + ".pth"
        if self.save_best_only:
            folder, model_file, metrics_file = "checkpoints", "latest_" + model_file, "latest_checkpoint_metrics.json"
        else:
            sub = (
                f"epoch_{trainer.current_epoch}" if self.save_freq == "epoch" else f"global_step_{trainer.global_step}"
            )
            folder, metrics_file = f"checkpoints/{sub}", "checkpoint_metrics.json"
        logger.set_tags({LATEST_CHECKPOINT_TAG: f"{folder}/{model_file}"})
        logger.log_dict(
            {**metrics, "epoch": trainer.current_epoch, "global_step": trainer.global_step}, f"{folder}/{metrics_file}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, model_file)
            # Lightning's own checkpoint content; trainer.save_checkpoint would wait for the other ranks (a
            # barrier) while only global rank 0 saves these.
            connector: Any = trainer._checkpoint_connector
            trainer.strategy.save_checkpoint(connector.dump_checkpoint(self.save_weights_only), path)
            logger.log_artifact(path, folder)  # snapshotted now: the temporary file may go
