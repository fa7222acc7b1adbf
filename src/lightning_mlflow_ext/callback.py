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

from lightning_mlflow_ext.errors import LightningMLflowError
from lightning_mlflow_ext.lineage.errors import LineageError
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint, fingerprint
from lightning_mlflow_ext.logger import MLflowLogger
from lightning_mlflow_ext.media import artifact_path

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


class MLflowCallback(Callback):
    """Records figures into the run of the Trainer's ``MLflowLogger``.

    Example::

        def confusion(trainer, module):
            fig, ax = plt.subplots()
            ...
            return fig

        trainer = Trainer(logger=MLflowLogger(), callbacks=[MLflowCallback(figures={"confusion": confusion})])

    Args:
        datasets: ``{"train": "data/train", "val": "data/val"}`` (or a list of paths, each named after its
            folder or file): logged once at fit start as dataset inputs, one per split, with the git/DVC
            source that ``mlflow.data.get_source(...).load()`` fetches again. Without it, the DataModule's
            ``mlflow_datasets`` attribute (same form) is used when present.
        lineage: ``"warn"`` logs what makes the data not reproducible (dirty, unpushed, outside git),
            ``"strict"`` refuses to start the fit then, ``"off"`` records no datasets.
        figures: name -> function ``(trainer, pl_module) -> figure`` (matplotlib or plotly), called at every
            validation epoch end (not during the sanity check); each figure is logged at step = epoch under
            ``figures/<name>/``.
    """

    def __init__(
        self,
        figures: Mapping[str, FigureFunction] | None = None,
        *,
        datasets: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]] | None = None,
        lineage: Literal["off", "warn", "strict"] = "warn",
    ) -> None:
        if lineage not in ("off", "warn", "strict"):
            raise ValueError(f"lineage must be 'off', 'warn' or 'strict', got {lineage!r}")
        self.datasets = _as_splits(datasets)
        self.lineage = lineage
        self.figures = dict(figures or {})
        self._digests: dict[str, str] = {}
        self._fingerprints: dict[str, Fingerprint] = {}
        self._trainer_logger: MLflowLogger | None = None
        for name in self.figures:
            artifact_path(name, what="figure name")

    def _logger(self, trainer: pl.Trainer) -> MLflowLogger:
        for logger in trainer.loggers:
            if isinstance(logger, MLflowLogger):
                return logger
        raise LightningMLflowError(
            "MLflowCallback needs an MLflowLogger on the Trainer: Trainer(logger=MLflowLogger(...), "
            "callbacks=[MLflowCallback(...)])."
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = self._logger(trainer)  # fail before training, not at the first epoch end
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
        self._fingerprints = logger._from_rank_zero(
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
        # Logged once the checkpoint being resumed (if any) has chosen the run: after setup.
        self._record(trainer)

    def _record(self, trainer: pl.Trainer) -> None:
        logger = self._trainer_logger
        if logger is None or not self._fingerprints or trainer.global_rank != 0:
            return
        logger.log_datasets(self._fingerprints)
        problems = self._problems()
        logger.set_lineage_tags("incomplete" if problems else "reproducible", problems)
        if problems:
            log.warning("The data of this fit cannot be fetched again exactly: %s", "; ".join(problems))

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
        if trainer.sanity_checking or not self.figures:
            return
        logger = self._logger(trainer)
        for name, make_figure in self.figures.items():
            logger.log_figure(make_figure(trainer, pl_module), name, step=trainer.current_epoch)
