"""MLflowCallback: what only Trainer hooks can see, recorded through the Trainer's ``MLflowLogger``.

The data a fit reads (dataset inputs with git/DVC lineage) and figures made at validation epoch ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlflow_ext.lineage.errors import LineageError
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint, fingerprint
from lightning_mlflow_ext.run.fluent import active_run_id
from lightning_mlflow_ext.trainer.distributed import from_rank_zero, is_global_rank_zero
from lightning_mlflow_ext.trainer.logger import MLflowLogger
from lightning_mlflow_ext.trainer.namespaces import FollowsNamespace, learning_rate_monitor_types
from lightning_mlflow_ext.trainer.summaries import (
    early_stopping_outcome,
    early_stopping_settings,
    learning_rates,
    model_summary,
    optimizer_settings,
    scheduler_settings,
    trainer_callbacks,
    trainer_settings,
)
from lightning_mlflow_ext.trainer.system_metrics import SystemMetrics
from lightning_mlflow_ext.values.media import artifact_path

log = logging.getLogger(__name__)

FigureFunction = Callable[[pl.Trainer, pl.LightningModule], Any]


def _as_splits(
    datasets: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] | None,
) -> dict[str, str | os.PathLike[str]]:
    if not datasets:
        return {}
    if isinstance(datasets, Mapping):
        return dict(datasets)
    return {os.path.basename(os.path.normpath(path)): path for path in datasets}


class MLflowCallback(FollowsNamespace, Callback):
    """Records what only Trainer hooks see into the run of the Trainer's ``MLflowLogger`` (one is added to the
    Trainer when it has none: the callback then owns the run, for autolog and callback-only use).

    At fit start: the data (dataset inputs with git/DVC lineage), the Trainer's settings, every optimizer and
    param group, the LR schedulers, EarlyStopping's settings, the model summary (artifact
    ``model_summary.txt``) and parameter counts. During the fit: the learning rate per step and figures at
    validation epoch ends. At fit end: EarlyStopping's outcome.

    Example::

        def confusion(trainer, module):
            fig, ax = plt.subplots()
            ...
            return fig

        trainer = Trainer(logger=MLflowLogger(), callbacks=[MLflowCallback(figures={"confusion": confusion})])

    Args:
        figures: name -> function ``(trainer, pl_module) -> figure`` (matplotlib or plotly), called at every
            validation epoch end (not during the sanity check); each figure is logged at step = epoch under
            ``figures/<name>/``.
        datasets: ``{"train": "data/train", "val": "data/val"}`` (or a list of paths, each named after its
            folder or file): logged once at fit start as dataset inputs, one per split, with the git/DVC
            source that ``mlflow.data.get_source(...).load()`` fetches again. Without it, the DataModule's
            ``mlflow_datasets`` attribute (same form) is used when present.
        lineage: ``"warn"`` logs what makes the data not reproducible (dirty, unpushed, outside git),
            ``"strict"`` refuses to start the fit then, ``"off"`` records no datasets.
        log_learning_rate: the learning rate of every param group as metrics (``lr-SGD``, ``lr-Adam/pg2``), at
            the Trainer's ``log_every_n_steps``; skipped when the Trainer has a ``LearningRateMonitor``.
        log_model_summary: the layer table as the artifact ``model_summary.txt``, and parameter counts as params.
        log_system_metrics: CPU, memory, disk, network (and GPU when present) through MLflow's own system
            metrics monitor, attached to this run while the fit runs; global rank 0 only, or every rank
            with ``"all_ranks"`` (each as its own node, ``system/rank_<n>/...``).
        logger_options: arguments of the ``MLflowLogger`` created when the Trainer has none.
    """

    def __init__(
        self,
        figures: Mapping[str, FigureFunction] | None = None,
        *,
        datasets: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] | None = None,
        lineage: Literal["off", "warn", "strict"] = "warn",
        log_learning_rate: bool = True,
        log_model_summary: bool = True,
        log_system_metrics: bool | Literal["all_ranks"] = False,
        logger_options: Mapping[str, Any] | None = None,
    ) -> None:
        if lineage not in ("off", "warn", "strict"):
            raise ValueError(f"lineage must be 'off', 'warn' or 'strict', got {lineage!r}")
        if log_system_metrics not in (True, False, "all_ranks"):
            raise ValueError(f"log_system_metrics must be True, False or 'all_ranks', got {log_system_metrics!r}")
        self.datasets = _as_splits(datasets)
        self.lineage = lineage
        self.figures = dict(figures or {})
        self.log_learning_rate = log_learning_rate
        self.log_model_summary = log_model_summary
        self.log_system_metrics = log_system_metrics
        self.logger_options = dict(logger_options or {})
        self._digests: dict[str, str] = {}
        self._fingerprints: dict[str, Fingerprint] = {}
        self._trainer_logger: MLflowLogger | None = None
        self._own_logger: MLflowLogger | None = None
        self._learning_rate_every = 0
        self._system_metrics: SystemMetrics | None = None
        for name in self.figures:
            artifact_path(name, what="figure name")

    def _active(self, trainer: pl.Trainer) -> bool:
        """False for a callback that must stay out of this Trainer (autolog's, next to the user's own)."""
        return True

    def _logger(self, trainer: pl.Trainer) -> MLflowLogger:
        """The Trainer's MLflowLogger; without one, a logger of this callback's, added to the Trainer's loggers
        (Lightning then drives it like any logger: metrics, hyperparameters, checkpoints, final status)."""
        for logger in trainer.loggers:
            if isinstance(logger, MLflowLogger):
                return logger
        if self._own_logger is None:
            self._own_logger = MLflowLogger(**self.logger_options)
        trainer.loggers = [*trainer.loggers, self._own_logger]
        return self._own_logger

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        logger = self._logger(trainer)
        self._trainer_logger = logger
        self._fingerprints = {}
        if stage != "fit" or self.lineage == "off":
            return
        datamodule = getattr(trainer, "datamodule", None)
        splits = self.datasets or _as_splits(getattr(datamodule, "mlflow_datasets", None))
        if not splits:
            return
        # Fingerprinted now (the checkpoint being resumed is compared with them), by rank 0 for every rank: the
        # data is read once, and lineage="strict" stops every rank, not just one.
        self._fingerprints = from_rank_zero(
            trainer, lambda: {split: fingerprint(path) for split, path in splits.items()}
        )
        self._digests = {split: fp.digest for split, fp in self._fingerprints.items()}
        problems = self._problems()
        if problems and self.lineage == "strict":
            self._record(trainer)  # the refused run says which data and why
            raise LineageError(
                "lineage='strict': the fit would train on data that cannot be fetched again exactly: "
                + "; ".join(problems)
                + ". Commit (and `dvc push`) the data and code, or use lineage='warn'."
            )

    def _problems(self) -> list[str]:
        return [
            f"{split}: {problem}"
            for split, fp in self._fingerprints.items()
            if not fp.reproducible
            for problem in (fp.problems or ("not at a clean, committed (and for DVC, pushed) version",))
        ]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Recorded once the checkpoint being resumed (if any) has chosen the run: after setup.
        self._record(trainer)
        logger = self._trainer_logger
        if logger is None:
            return
        if self.log_system_metrics and (trainer.global_rank == 0 or self.log_system_metrics == "all_ranks"):
            node = f"rank_{trainer.global_rank}" if self.log_system_metrics == "all_ranks" else None
            self._system_metrics = SystemMetrics(logger.run_id, logger.tracking_uri, node)
        if trainer.global_rank != 0:
            return
        params = trainer_settings(trainer)
        params.update(optimizer_settings(trainer.optimizers))
        params.update(scheduler_settings(trainer))
        params.update(early_stopping_settings(trainer_callbacks(trainer)))
        if self.log_model_summary:
            text, counts = model_summary(pl_module)
            params.update(counts)
            logger.log_text(text, "model_summary.txt")
        logger.log_hyperparams(params)
        monitors = any(isinstance(cb, learning_rate_monitor_types()) for cb in trainer_callbacks(trainer))
        every: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        self._learning_rate_every = every if self.log_learning_rate and not monitors else 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        every = self._learning_rate_every
        if every and trainer.global_step % every == 0 and self._trainer_logger is not None:
            self._trainer_logger.log_metrics(learning_rates(trainer), step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before Lightning's teardown finalizes the logger: nothing is written into an ended run.
        outcome = early_stopping_outcome(trainer_callbacks(trainer))
        if outcome and self._trainer_logger is not None and trainer.global_rank == 0:
            self._trainer_logger.log_metrics(outcome, step=trainer.global_step)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._learning_rate_every = 0
        if self._system_metrics is not None:
            self._system_metrics.stop()
            self._system_metrics = None

    def _record(self, trainer: pl.Trainer) -> None:
        logger = self._trainer_logger
        if logger is None or not self._fingerprints or trainer.global_rank != 0:
            return
        logger.log_datasets(self._fingerprints)
        problems = self._problems()
        logger.set_lineage_tags("incomplete" if problems else "reproducible", problems)
        if problems:
            log.warning("The data of this fit cannot be fetched again exactly: %s", "; ".join(problems))

    # A copy in another process (ddp_spawn pickles the Trainer for its workers).

    def __getstate__(self) -> dict[str, Any]:
        if (
            self._own_logger is None
            and "run_id" not in self.logger_options
            and is_global_rank_zero()
            and active_run_id() is not None
        ):
            # The workers have no active run: the logger this callback adds to a Trainer without one is made here,
            # where the user's `with mlflow.start_run():` is active, and its copies carry that run (the logger
            # resolves it when it is pickled). Unused when the Trainer has an MLflowLogger of its own.
            self._own_logger = MLflowLogger(**self.logger_options)
        return self.__dict__.copy()

    # Lineage travels in Lightning checkpoints: a fit resumed on other data is detected and recorded.

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"dataset_digests": dict(self._digests)} if self._digests else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved: dict[str, str] = state_dict.get("dataset_digests", {})
        # Lightning restores callback state after setup, so self._digests holds the data of this fit.
        changed = sorted(split for split, digest in saved.items() if self._digests.get(split, digest) != digest)
        if not changed:
            return
        message = (
            f"Resuming from a checkpoint trained on other data: {changed} changed since it was saved "
            f"(digests {[saved[s] for s in changed]} then, {[self._digests[s] for s in changed]} now)."
        )
        if self._trainer_logger is not None:
            self._trainer_logger.record_resumed_on_changed_data({s: (saved[s], self._digests[s]) for s in changed})
        if self.lineage == "strict":
            raise LineageError(message + " lineage='strict' refuses to continue; use lineage='warn' to allow it.")
        log.warning(message)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._trainer_logger
        if trainer.sanity_checking or not self.figures or logger is None:
            return
        for name, make_figure in self.figures.items():
            logger.log_figure(make_figure(trainer, pl_module), name, step=trainer.current_epoch)
