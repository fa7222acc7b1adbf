"""A sweep (an Optuna study, a Hydra multirun) as MLflow records it: one parent run per sweep, a child per trial.

This module finds or creates the parent, and keeps the parent a trial of this process writes into (its status
and the best-trial summary go through that parent's own ``RunSession``). It knows MLflow, not Optuna or Hydra:
``lightning_mlflow_ext.optuna`` and ``.hydra`` describe their trials as a :class:`Sweep`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Run

from lightning_mlflow_ext.run.tags import (
    MAX_TAG_VALUE,
    OWNER,
    OWNER_TAG,
    SWEEP_BEST_PARAM_PREFIX,
    SWEEP_BEST_RUN_TAG,
    SWEEP_BEST_TRIAL_METRIC,
    SWEEP_BEST_TRIAL_TAG,
    SWEEP_BEST_VALUE_METRIC,
    SWEEP_ID_TAG,
    SWEEP_KIND_TAG,
    SWEEP_NAME_TAG,
)
from lightning_mlflow_ext.values.names import NameMapper, truncate_value

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.lifecycle import FinalStatus
    from lightning_mlflow_ext.run.session import RunSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """The sweep a trial belongs to: what finds its parent run again, and what that parent is called.

    ``key`` is unique per sweep in one experiment (every trial of the sweep gives the same one); ``name`` is
    what a user recognises (the study's name, Hydra's sweep dir) and the parent's run name.
    """

    kind: str
    key: str
    name: str

    @classmethod
    def of(cls, kind: str, name: str, identity: str | None = None) -> Sweep:
        """A sweep keyed by a hash of ``identity`` (default ``name``): short, and safe in a search filter."""
        digest = hashlib.sha256(f"{kind}:{identity or name}".encode()).hexdigest()[:32]
        return cls(kind=kind, key=digest, name=name)

    @property
    def parent_tags(self) -> dict[str, str]:
        return {SWEEP_ID_TAG: self.key, SWEEP_KIND_TAG: self.kind, SWEEP_NAME_TAG: self.name[:MAX_TAG_VALUE]}

    @property
    def trial_tags(self) -> dict[str, str]:
        return {SWEEP_KIND_TAG: self.kind, SWEEP_NAME_TAG: self.name[:MAX_TAG_VALUE]}


def _no_params() -> Mapping[str, Any]:
    return {}


def _nothing_to_note(run_id: str, parent_run_id: str | None) -> None:
    pass


@dataclass(frozen=True)
class SweepTrial:
    """One trial (an Optuna trial, a Hydra job) of a sweep, as its child run records it.

    ``params`` gives the trial's parameters as they are now (Optuna's grow while the objective suggests them);
    ``note_run`` tells the sweep tool which runs the trial was recorded in (Optuna keeps them as user attrs).
    """

    sweep: Sweep
    number: int
    run_name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Callable[[], Mapping[str, Any]] = _no_params
    note_run: Callable[[str, str | None], None] = _nothing_to_note


def find_or_create_parent(client: MlflowClient, experiment_id: str, sweep: Sweep, create: Callable[[], Run]) -> Run:
    """The sweep's parent run in ``experiment_id``: the oldest one tagged with its key, else a new one.

    Create, then look again: two processes that both found none and both created one (a parallel launcher
    starting its jobs together) each keep the oldest of the two and delete their own, so they converge on
    one parent. A second parent can survive only if the hosts' clocks disagree by more than the time between
    the two creations; the sequential launchers (Optuna's ``optimize``, Hydra's basic launcher) never race.
    """
    found = _parents(client, experiment_id, sweep)
    if found:
        return found[0]
    mine = create()
    oldest = _parents(client, experiment_id, sweep)[0]
    if oldest.info.run_id != mine.info.run_id:
        log.info("Another process created the parent run of sweep %r first; using it (%s)", sweep.name, oldest)
        client.set_terminated(mine.info.run_id, "KILLED")  # in the trash, it must not look like a live run
        client.delete_run(mine.info.run_id)
    return oldest


def _parents(client: MlflowClient, experiment_id: str, sweep: Sweep) -> list[Run]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep.key}'", max_results=100)
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def owns_parent(parent: Run) -> bool:
    """A parent this package created for the sweep (not the user's own run): its status follows the trials."""
    return parent.data.tags.get(OWNER_TAG) == OWNER and SWEEP_ID_TAG in parent.data.tags


# ---- the parent a trial of this process writes into ---------------------------------------------------


@dataclass
class BestTrial:
    """The best trial of a sweep so far, as the parent run records it."""

    value: float
    number: int
    run_id: str | None
    params: Mapping[str, Any] = field(default_factory=dict)


class SweepParent:
    """The parent run of the sweep, as one trial of this process sees it.

    A parent this package created is RUNNING while a trial of it runs here, and ends as that trial ended (a
    pruned trial counts as finished); the user's own run (the active run) is never ended. Writes go through
    the parent's own session, like any run's.
    """

    def __init__(self, run_id: str, session: RunSession, *, owned: bool) -> None:
        self.run_id = run_id
        self._session = session  # resolved on first use: the user's run only when a summary is written into it
        self._owned = owned
        self._param_names = NameMapper()

    def trial_started(self) -> None:
        if self._owned:
            self._session.ensure_running()

    def trial_ended(self, status: FinalStatus, timeout: float, *, at_exit: bool = False) -> None:
        if self._owned:
            self._session.end(status, timeout, at_exit=at_exit)

    def record_best(self, best: BestTrial, after_trial: int) -> None:
        """The best trial so far, on the parent; its metrics at step ``after_trial`` (the trial just ended), so
        their history is the sweep's progress. The parent is ended again as the trial left it."""
        tags = {SWEEP_BEST_TRIAL_TAG: str(best.number)}
        if best.run_id:
            tags[SWEEP_BEST_RUN_TAG] = best.run_id
        for name, value in best.params.items():
            key = self._param_names.map(SWEEP_BEST_PARAM_PREFIX + str(name))
            tags[key] = truncate_value(str(value), MAX_TAG_VALUE)[0]
        now = int(time.time() * 1000)
        self._session.set_tags(tags)
        self._session.log_metrics(
            [
                (SWEEP_BEST_VALUE_METRIC, float(best.value), now, after_trial),
                (SWEEP_BEST_TRIAL_METRIC, float(best.number), now, after_trial),
            ]
        )
        self._session.end("FINISHED")


#: The parents trials of this process wrote into, by run id: where a study's callback finds one.
_parents_in_process: dict[str, SweepParent] = {}


def remember(parent: SweepParent) -> None:
    _parents_in_process[parent.run_id] = parent


def parent_in_process(run_id: str) -> SweepParent | None:
    """The parent run ``run_id`` if a trial of this process wrote into it."""
    return _parents_in_process.get(run_id)
