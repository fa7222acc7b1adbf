"""Optuna studies in MLflow: a child run per trial (``MLflowLogger(trial=trial)``) under one parent run per
study, and the best trial on that parent (``record_best_trial``, a study callback).

Optuna stays optional: nothing here imports it (a trial is read through its public attributes).

Example::

    import optuna
    from optuna_integration import PyTorchLightningPruningCallback
    from lightning_mlflow_ext import MLflowLogger
    from lightning_mlflow_ext.optuna import record_best_trial

    def objective(trial):
        model = Model(lr=trial.suggest_float("lr", 1e-4, 1e-1, log=True))
        trainer = Trainer(
            logger=MLflowLogger(experiment_name="tuning", trial=trial),
            callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_loss")],
        )
        trainer.fit(model, datamodule)
        return trainer.callback_metrics["val_loss"].item()

    study = optuna.create_study(study_name="lr-search", pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=20, callbacks=[record_best_trial])
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.run.sweeps import BestTrial, Sweep, SweepTrial, parent_in_process
from lightning_mlflow_ext.run.tags import SWEEP_TRIAL_TAG
from lightning_mlflow_ext.warn_once import WarnOnce

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

__all__ = ["PARENT_RUN_ID_ATTR", "RUN_ID_ATTR", "optuna_trial", "record_best_trial"]

log = logging.getLogger(__name__)
_warn_once = WarnOnce(log)

#: The trial's user attrs naming its MLflow run (the name optuna-integration's MLflowCallback uses) and the
#: study's parent run: ``study.trials_dataframe()`` shows them.
RUN_ID_ATTR = "mlflow_run_id"
PARENT_RUN_ID_ATTR = "mlflow_parent_run_id"


def optuna_trial(trial: Any) -> SweepTrial:
    """An Optuna trial as the run records it: ``trial-<number>``, a child of its study's parent run (found by
    the study's name in the experiment, or created), with the trial's params."""
    study = getattr(trial, "study", None)
    if study is None or not hasattr(trial, "number") or not hasattr(trial, "set_user_attr"):
        raise TypeError(f"trial= takes the optuna.Trial that study.optimize() passes to your objective, got {trial!r}.")

    def note_run(run_id: str, parent_run_id: str | None) -> None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        if parent_run_id is not None:
            trial.set_user_attr(PARENT_RUN_ID_ATTR, parent_run_id)

    return SweepTrial(
        sweep=Sweep.of("optuna", str(study.study_name)),
        number=int(trial.number),
        run_name=f"trial-{trial.number}",
        tags={SWEEP_TRIAL_TAG: str(trial.number)},
        params=lambda: dict(trial.params),
        note_run=note_run,
    )


def record_best_trial(study: Study, trial: FrozenTrial) -> None:
    """A study callback (``study.optimize(..., callbacks=[record_best_trial])``): after each trial, the study's
    best trial on its parent run: the metrics ``best_value`` and ``best_trial`` (at step = the trial just
    ended, so their history is the study's progress), and tags naming the best trial, its run and its params.

    It writes into the parent a trial of this process recorded with ``MLflowLogger(trial=trial)``.
    """
    parent_run_id = trial.user_attrs.get(PARENT_RUN_ID_ATTR)
    if parent_run_id is None:
        return  # no MLflowLogger(trial=trial) recorded this trial
    parent = parent_in_process(str(parent_run_id))
    if parent is None:
        _warn_once(
            f"no-parent:{parent_run_id}",
            f"record_best_trial: trial {trial.number} was recorded under the MLflow run {parent_run_id} by "
            "another process; the best trial is recorded by the process that ran it.",
        )
        return
    if len(study.directions) > 1:
        _warn_once(
            "multi-objective",
            "record_best_trial: a multi-objective study has no single best trial; nothing is recorded.",
        )
        return
    try:
        best = study.best_trial
    except ValueError:
        return  # no trial has completed yet (pruned or failed so far)
    if best.value is None:
        return
    best_run = best.user_attrs.get(RUN_ID_ATTR)
    parent.record_best(
        BestTrial(best.value, best.number, None if best_run is None else str(best_run), best.params),
        after_trial=trial.number,
    )
