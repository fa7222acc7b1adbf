"""MLflowCallback: what only Trainer hooks can see, recorded through the Trainer's ``MLflowLogger``.

For now: figures made by user functions at every validation epoch end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlflow_ext.errors import LightningMLflowError
from lightning_mlflow_ext.logger import MLflowLogger
from lightning_mlflow_ext.media import artifact_path

FigureFunction = Callable[[pl.Trainer, pl.LightningModule], Any]


class MLflowCallback(Callback):
    """Records figures into the run of the Trainer's ``MLflowLogger``.

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
    """

    def __init__(self, figures: Mapping[str, FigureFunction] | None = None) -> None:
        self.figures = dict(figures or {})
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
        self._logger(trainer)  # fail before training, not at the first epoch end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.figures:
            return
        logger = self._logger(trainer)
        for name, make_figure in self.figures.items():
            logger.log_figure(make_figure(trainer, pl_module), name, step=trainer.current_epoch)
