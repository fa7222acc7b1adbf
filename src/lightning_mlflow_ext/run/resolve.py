"""Which run a training writes into: an explicit id, the active run, ``MLFLOW_RUN_ID``, the run a checkpoint was
trained in, else a new one; found and checked here.

A child (``parent_run_id``, or a trial of a sweep) is always a new run: the active run or ``MLFLOW_RUN_ID`` is
then its parent, never the run itself. Nothing here changes a run it finds. The one side effect is
:meth:`RunResolver.create`, when a new run is the answer (with its experiment, and a sweep's parent run, when
they do not exist yet).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from lightning_mlflow_ext.errors import (
    DeletedExperimentError,
    DeletedRunError,
    LightningMLflowError,
    RunNotFoundError,
)
from lightning_mlflow_ext.run.heartbeat import heartbeat, heartbeat_stopped
from lightning_mlflow_ext.run.provenance import current_code_tags, new_run_tags
from lightning_mlflow_ext.run.sweeps import Sweep, find_or_create_parent
from lightning_mlflow_ext.run.tags import HEARTBEAT_TAG, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, OWNER, OWNER_TAG

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_NAME = "lightning_logs"

#: Where the run came from, in the order they are tried (``created``: none applied).
Origin = Literal["created", "run_id", "active_run", "env_run_id", "checkpoint"]


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for: a run by id, or what a new run is called, where it goes and what it carries."""

    run_id: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    artifact_location: str | None = None
    sweep: Sweep | None = None  # a trial of this sweep: a child of the sweep's parent run

    @property
    def new_child(self) -> bool:
        """A new run under a parent: the active run or ``MLFLOW_RUN_ID`` is its parent, not the run to log into."""
        return self.parent_run_id is not None or self.sweep is not None

    def tags_for_found(self, run_id: str) -> dict[str, str]:
        """What a run found elsewhere (``run_id``) gets of this request: its tags, name and parent (a new run is
        created with them). Never itself as its parent."""
        tags = dict(self.tags)
        if self.run_name:
            tags[MLFLOW_RUN_NAME] = self.run_name
        if self.parent_run_id and self.parent_run_id != run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.parent_run_id
        return tags


@dataclass(frozen=True)
class FoundRun:
    """A run and where it came from, with what the lifecycle needs to know of its state when it was found."""

    run: Run
    origin: Origin
    sweep_parent: Run | None = None  # a trial's: the sweep's parent run (found, or created with it)

    @property
    def status(self) -> str:
        return str(self.run.info.status)

    @property
    def running(self) -> bool:
        return self.status == RunStatus.to_string(RunStatus.RUNNING)

    @property
    def ours(self) -> bool:
        """Created by this package (some process of it), not by the user or another tool."""
        return self.run.data.tags.get(OWNER_TAG) == OWNER

    @property
    def abandoned(self) -> bool:
        """RUNNING, ours, and the process that wrote into it is gone: killed without ending the run."""
        return self.running and self.ours and heartbeat_stopped(self.run.data.tags.get(HEARTBEAT_TAG))


class RunResolver:
    """Finds the run a request names in one tracking store, or creates one; remembers experiment names."""

    def __init__(self, client: MlflowClient, tracking_uri: str, experiment_names: dict[str, str]) -> None:
        self._client = client
        self._tracking_uri = tracking_uri
        self._experiment_names = experiment_names  # experiment id -> name, shared with the owner: kept in copies

    def resolve(self, request: RunRequest, *, checkpoint_run_id: str | None, may_create: bool) -> FoundRun:
        """The run to write into; a new one when nothing names one and this process may create it."""
        found = self.find(request, checkpoint_run_id)
        if found is not None:
            if may_create and found.abandoned:
                log.warning(
                    "MLflow run %s is RUNNING, but the process that wrote into it is gone (heartbeat %s): it was "
                    "killed without ending the run. This process continues the run and ends it.",
                    found.run.info.run_id,
                    found.run.data.tags.get(HEARTBEAT_TAG),
                )
            return found
        if not may_create:
            raise LightningMLflowError(
                "This process is not global rank 0, and the run is not known here yet: rank 0 creates it "
                "and hands its id to the other ranks when the Trainer sets up. Read the logger's run id, "
                "name or version after trainer.fit() has started, or pass run_id (or MLFLOW_RUN_ID). "
                "With fit(ckpt_path='last') and several processes, name the run (run_id=, MLFLOW_RUN_ID) or "
                "give the ModelCheckpoint a dirpath, so every rank finds the same last checkpoint."
            )
        return self.create(request)

    def find(self, request: RunRequest, checkpoint_run_id: str | None) -> FoundRun | None:
        """The first that applies: explicit ``run_id`` -> active run -> ``MLFLOW_RUN_ID`` -> the checkpoint's."""
        if request.run_id:
            if request.run_id == request.parent_run_id:
                raise LightningMLflowError(
                    f"run_id and parent_run_id are the same run ({request.run_id}): a run cannot be its own "
                    "parent. Pass parent_run_id alone to log into a new child run of it, or run_id alone to log "
                    "into the run itself."
                )
            return FoundRun(self.existing_run(request.run_id, "run_id"), "run_id")
        if not request.new_child:
            found = self.active_or_env_run()
            if found is not None:
                return found
        if checkpoint_run_id:
            run = self.checkpoint_run(checkpoint_run_id)
            return None if run is None else FoundRun(run, "checkpoint")
        return None

    def active_or_env_run(self) -> FoundRun | None:
        """The active run (if it is in this store), else the run ``MLFLOW_RUN_ID`` names, else None."""
        active = mlflow.active_run()
        if active is not None:
            try:
                return FoundRun(self._client.get_run(active.info.run_id), "active_run")
            except MlflowException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
                log.warning(
                    "An MLflow run (%s) is active, but it is not in this logger's tracking store %s; "
                    "starting a separate run. Pass tracking_uri=mlflow.get_tracking_uri() to log into it.",
                    active.info.run_id,
                    self._tracking_uri,
                )
        env_run_id = os.environ.get("MLFLOW_RUN_ID")
        if env_run_id:
            return FoundRun(self.existing_run(env_run_id, "MLFLOW_RUN_ID"), "env_run_id")
        return None

    def checkpoint_run(self, run_id: str) -> Run | None:
        """The run a checkpoint was trained in, if this store has it (and it is not deleted)."""
        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning(
                "The checkpoint being resumed was trained in MLflow run %s, which is not in the tracking store %s "
                "(or is deleted); this fit is recorded in a new run.",
                run_id,
                self._tracking_uri,
            )
            return None
        return run

    def existing_run(self, run_id: str, source: str) -> Run:
        """The run ``source`` names; a missing or deleted one is an error that says what to check."""
        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise RunNotFoundError(
                    f"No MLflow run with id {run_id!r} (from {source}) in the tracking store {self._tracking_uri}. "
                    f"Check {source} and the tracking URI, or leave {source} unset to start a new run."
                ) from exc
            raise
        if run.info.lifecycle_stage == "deleted":
            raise DeletedRunError(
                f"MLflow run {run_id!r} (from {source}) is deleted. Restore it with "
                f"`mlflow runs restore --run-id {run_id}` (MLFLOW_TRACKING_URI={self._tracking_uri}), "
                f"or leave {source} unset to start a new run."
            )
        return run

    def experiment_name_of(self, experiment_id: str) -> str:
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = str(self._client.get_experiment(experiment_id).name)
        return self._experiment_names[experiment_id]

    # ---- the one place a run is created ---------------------------------------------------------

    def create(self, request: RunRequest) -> FoundRun:
        """A new run, owned by this package, with the code's git tags and MLflow's run context; a child of
        ``parent_run_id``, or for a sweep's trial, of the active run, ``MLFLOW_RUN_ID``'s run, else the sweep's
        own parent run (found by its key, or created)."""
        parent = self._parent_of_new_run(request)
        # The git calls (subprocesses) run while the experiment is looked up on the server: both mostly wait.
        with ThreadPoolExecutor(1, thread_name_prefix="mlflow-code-state") as pool:
            code = pool.submit(current_code_tags)
            experiment_id = self._experiment_for_new_run(request, parent)
            code_tags = code.result()
        sweep = request.sweep
        if sweep is not None and parent is None:
            parent = find_or_create_parent(
                self._client,
                experiment_id,
                sweep,
                lambda: self._create_run(experiment_id, sweep.name, sweep.parent_tags, None, code_tags),
            )
        tags = dict(sweep.trial_tags if sweep is not None else {}) | dict(request.tags)
        run = self._create_run(experiment_id, request.run_name, tags, parent, code_tags)
        return FoundRun(run, "created", sweep_parent=parent if sweep is not None else None)

    def _parent_of_new_run(self, request: RunRequest) -> Run | None:
        if request.parent_run_id:
            return self.existing_run(request.parent_run_id, "parent_run_id")
        if request.sweep is not None:
            found = self.active_or_env_run()
            return None if found is None else found.run
        return None

    def _create_run(
        self,
        experiment_id: str,
        run_name: str | None,
        tags: Mapping[str, str],
        parent: Run | None,
        code_tags: Mapping[str, str],
    ) -> Run:
        """The one place a run is created."""
        tags = dict(tags)
        tags[OWNER_TAG] = OWNER
        tags[HEARTBEAT_TAG] = heartbeat()
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent.info.run_id
        return self._client.create_run(experiment_id, run_name=run_name, tags=new_run_tags(tags, code_tags))

    def _experiment_for_new_run(self, request: RunRequest, parent: Run | None) -> str:
        """The id of the experiment a new run goes into (``experiment_name`` -> its parent's (MLflow's UI shows
        a child under its parent only there) -> ``MLFLOW_EXPERIMENT_NAME`` -> ``MLFLOW_EXPERIMENT_ID`` ->
        ``"lightning_logs"``), created if missing: only ever called by create()."""
        if not request.experiment_name and parent is not None:
            return str(parent.info.experiment_id)
        name = request.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name and os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = name or DEFAULT_EXPERIMENT_NAME
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                created = str(self._client.create_experiment(name, artifact_location=request.artifact_location))
                self._experiment_names[created] = name
                return created
            except MlflowException as exc:
                # Another process (a DDP rank, a parallel job) created it first.
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = self._client.get_experiment_by_name(name)
                assert experiment is not None
        if experiment.lifecycle_stage == "deleted":
            raise DeletedExperimentError(
                f"The MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted, and a deleted "
                f"experiment's name cannot be reused. Restore it with `mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`, delete it for good with `mlflow gc "
                f"--experiment-ids {experiment.experiment_id}` (MLFLOW_TRACKING_URI={self._tracking_uri}), "
                f"or choose another experiment_name."
            )
        self._experiment_names[str(experiment.experiment_id)] = name
        return str(experiment.experiment_id)
