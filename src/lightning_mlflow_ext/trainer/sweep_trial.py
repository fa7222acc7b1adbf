"""A logger's run as one trial of a sweep: which trial (``trial=``, or the Hydra multirun job it runs in), its
params, and how it ended (a pruned trial is pruned, not failed).

The sweep's parent run is the session's (``run/sweeps.py``); this part records what only the logger sees.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.hydra import current_job
from lightning_mlflow_ext.optuna import optuna_trial
from lightning_mlflow_ext.run.sweeps import SweepTrial
from lightning_mlflow_ext.run.tags import SWEEP_TRIAL_STATE_TAG

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.session import FinalStatus, RunSession
    from lightning_mlflow_ext.trainer.hyperparams import HyperparamRecorder

#: The run's final status -> the trial's state, in Optuna's words (a pruned trial's run is FINISHED).
TRIAL_STATES = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "KILLED"}
PRUNED = "PRUNED"


def sweep_trial(trial: Any) -> SweepTrial | None:
    """The trial this logger records: ``trial=`` (an Optuna trial), else the Hydra multirun job this process
    runs, else None."""
    if trial is not None:
        return optuna_trial(trial)
    return current_job()


def is_pruned(exception: BaseException) -> bool:
    """Optuna's ``TrialPruned`` (raised by its pruning callback, or by the user's own): a trial its pruner
    stopped. Optuna is asked only if it is imported (whoever raised it imported it)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exception, optuna.TrialPruned)


def _not_noted(run_id: str, parent_run_id: str | None) -> None:
    pass


class TrialRecorder:
    """Records the trial's params and its state on the run; tells the sweep tool which run the trial is."""

    def __init__(self, session: RunSession, hparams: HyperparamRecorder, trial: SweepTrial | None) -> None:
        self._session = session
        self._hparams = hparams
        self._trial = trial
        self._pruned = False

    @property
    def pruned(self) -> bool:
        return self._pruned

    def note_exception(self, exception: BaseException) -> None:
        self._pruned = is_pruned(exception)

    def stage_started(self) -> None:
        """The run is known: the params suggested so far, and the run's id for the sweep tool."""
        if self._trial is not None:
            self._record()

    def stage_ended(self, final: FinalStatus) -> FinalStatus:
        """The trial's state on its run; the run's final status (a pruned trial is FINISHED: its pruner's
        decision, not a failure)."""
        pruned, self._pruned = self._pruned, False
        if pruned:
            final = "FINISHED"
        if self._trial is not None:
            self._record()  # params suggested after the fit started
            self._session.set_tags({SWEEP_TRIAL_STATE_TAG: PRUNED if pruned else TRIAL_STATES[final]})
        return final

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process (ddp_spawn) tags the trial's state, but leaves the trial itself (an Optuna
        # trial holds its study's storage) to the process that has it.
        state = self.__dict__.copy()
        if self._trial is not None:
            state["_trial"] = replace(self._trial, params=dict, note_run=_not_noted)
        return state

    def _record(self) -> None:
        assert self._trial is not None
        self._hparams.log(self._trial.params())
        self._trial.note_run(self._session.run_id, self._session.sweep_parent_id)
