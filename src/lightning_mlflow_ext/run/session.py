"""RunSession: finds, attaches to or creates the one MLflow run a training writes into.

It owns the run's lifecycle (RUNNING while work is logged, a final status on every exit path).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking.context.git_context import GitRunContext
from mlflow.tracking.context.registry import resolve_tags

from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts
from lightning_mlflow_ext.delivery.journal import Header, Journal, journal_path
from lightning_mlflow_ext.delivery.transport import MetricPoint, make_transport
from lightning_mlflow_ext.delivery.uploader import ArtifactUploader
from lightning_mlflow_ext.delivery.writer import DeliveryReport, RunWriter
from lightning_mlflow_ext.errors import (
    DeletedExperimentError,
    DeletedRunError,
    LightningMLflowError,
    RunNotFoundError,
)
from lightning_mlflow_ext.lineage.dataset import dataset_records
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint
from lightning_mlflow_ext.lineage.git import code_diff, code_state, untracked_files
from lightning_mlflow_ext.run.tags import (
    GIT_TAG_PREFIX,
    HEARTBEAT_TAG,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    OWNER,
    OWNER_TAG,
    RELEASED,
)
from lightning_mlflow_ext.run.tracking import probe_server, refusals_explained

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_NAME = "lightning_logs"

HEARTBEAT_INTERVAL = 60.0
#: A heartbeat from another host older than this means its process is gone.
HEARTBEAT_STALE_AFTER = 5 * HEARTBEAT_INTERVAL

#: Of the end-of-run wait, what is kept for putting undelivered writes in the journal.
PARK_RESERVE_S = 1.0

FinalStatus = Literal["FINISHED", "FAILED", "KILLED"]
Origin = Literal["created", "run_id", "active_run", "env_run_id", "checkpoint"]



def source_dir() -> str:
    """Where the code being run lives: the main script's folder, else (a notebook, ``python -c``, a tool
    launched from site-packages such as pytest or ipykernel) the working directory."""
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not os.path.isfile(main) or "site-packages" in main or "ipykernel" in main:
        return os.getcwd()
    return os.path.dirname(main)


def _always() -> bool:
    return True


def heartbeat() -> str:
    return f"{time.time():.0f} {socket.gethostname()} {os.getpid()}"


def heartbeat_stopped(value: str | None) -> bool:
    """True when the process that last wrote this heartbeat is gone (unknown: False, assume it lives)."""
    try:
        stamp, host, pid = (value or "").split(" ")
        written, process = float(stamp), int(pid)
    except ValueError:
        return False
    if host == socket.gethostname():
        try:
            os.kill(process, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - written > HEARTBEAT_STALE_AFTER


class RunSession:
    """The run one logger writes into, resolved on first use.

    Resolution, first that applies: ``run_id`` -> ``mlflow.active_run()`` -> ``MLFLOW_RUN_ID`` ->
    a new run in ``experiment_name`` -> ``MLFLOW_EXPERIMENT_NAME`` -> ``"lightning_logs"``.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
        synchronous: bool = False,
        server_wait: float = 30.0,
        save_dir: str = ".",
        flush_timeout: float = 60.0,
        may_create: Callable[[], bool] = _always,
        end_run: bool | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self._end_run = end_run
        self.save_dir = save_dir
        self._flush_timeout = flush_timeout
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._requested_run_id = run_id
        self._parent_run_id = parent_run_id
        self._tags = dict(tags or {})
        self._artifact_location = artifact_location
        self._synchronous = synchronous
        self._server_wait = server_wait
        self._client: MlflowClient | None = None
        self._writer: RunWriter | None = None
        self._uploader: ArtifactUploader | None = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._resolved_experiment_name: str | None = None
        self._origin: Origin | None = None
        self._owns_run = False
        self._running = False
        self._lock = threading.RLock()
        self._logged_params: dict[str, str] | None = None
        self._artifact_uri: str | None = None
        self._initial_tags: dict[str, str] = {}
        self._found_status: str | None = None
        self._worst_status: FinalStatus | None = None
        self._may_create = may_create
        self._checkpoint_run_id: str | None = None
        self._fresh = False  # created by this session, and nothing but tags written into it yet
        self._experiment_names: dict[str, str] = {}  # experiment id -> name, as far as this session has seen

    # ---- identity ---------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def resolved(self) -> bool:
        return self._run_id is not None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._resolve()
        assert self._run_id is not None
        return self._run_id

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._resolve()
        assert self._experiment_id is not None
        return self._experiment_id

    @property
    def experiment_name(self) -> str:
        if self._resolved_experiment_name is None:
            self._resolve()
        assert self._resolved_experiment_name is not None
        return self._resolved_experiment_name

    @property
    def flush_timeout(self) -> float:
        return self._flush_timeout

    @property
    def owns_run(self) -> bool:
        """True when this session ends the run: it created it, or reopened a run that had ended."""
        return self._owns_run

    @property
    def origin(self) -> Origin | None:
        return self._origin

    @property
    def identity(self) -> tuple[str, str, str]:
        """(run id, experiment id, experiment name): what another process needs to log into this run."""
        return self.run_id, self.experiment_id, self.experiment_name

    def adopt(self, identity: tuple[str, str, str], *, replace: bool = False) -> None:
        """Use a run another process resolved (DDP ranks other than 0); never creates or ends it."""
        with self._lock:
            if self._run_id is None or (replace and self._run_id != identity[0]):
                self._run_id, self._experiment_id, self._resolved_experiment_name = identity
                self._artifact_uri = None  # another run's: read from the store if an upload needs it

    @property
    def initial_tags(self) -> dict[str, str]:
        """The tags an attached run already had when this session found it (empty for a created run)."""
        return self._initial_tags

    def begin_fit(self) -> None:
        """A fit (new or resumed) starts: an earlier failure of this run no longer decides its final status."""
        self._worst_status = None

    def start_new_run(self) -> None:
        """Forget the current (ended) run: the next write creates a new one. Only for runs this session created."""
        with self._lock:
            if self._writer is not None:
                self._writer.park()
            self._forget_run()

    def _forget_run(self) -> None:
        """Drop everything tied to the current run; the next use resolves (or creates) a run again."""
        self._writer = None
        self._uploader = None
        self._run_id = self._experiment_id = self._resolved_experiment_name = None
        self._origin = None
        self._owns_run = self._running = self._fresh = False
        self._logged_params = None
        self._artifact_uri = None
        self._initial_tags = {}
        self._worst_status = None

    # ---- resolution -------------------------------------------------------------------------

    def _resolve(self) -> None:
        with self._lock:
            if self._run_id is not None:
                return
            probe_server(self.tracking_uri, self._server_wait)
            with refusals_explained(self.tracking_uri):
                self._resolve_checked()

    def _resolve_checked(self) -> None:
        with self._lock:
            run, origin = self._find_run()
            if not self._may_create():
                if run is None:
                    raise LightningMLflowError(
                        "This process is not global rank 0, and the run is not known here yet: rank 0 creates it "
                        "and hands its id to the other ranks when the Trainer sets up. Read the logger's run id, "
                        "name or version after trainer.fit() has started, or pass run_id (or MLFLOW_RUN_ID). "
                        "With fit(ckpt_path='last') and several processes, name the run (run_id=, MLFLOW_RUN_ID) or "
                        "give the ModelCheckpoint a dirpath, so every rank finds the same last checkpoint."
                    )
                # Another rank's run: this process knows it, and never writes into it or ends it.
                self._set_identity(run, origin)
                return
            if run is None:
                run = self._create_run()
                origin = "created"
            assert origin is not None
            self._set_identity(run, origin)
            if origin == "created":
                self._owns_run = self._end_run is not False
                self._running = True
                _open_sessions.add(self)
                self._record_code_diff(run.data.tags)
                self._fresh = True
            else:
                self._initial_tags = dict(run.data.tags)
                self._attach(run)
            if journal_path(self.save_dir, run.info.run_id).exists():
                _ = self.writer  # an earlier process left undelivered writes: replay them now

    def _set_identity(self, run: Run, origin: Origin | None) -> None:
        self._origin = origin
        self._run_id = run.info.run_id
        self._experiment_id = run.info.experiment_id
        self._resolved_experiment_name = self._experiment_name_of(run.info.experiment_id)
        # Known now, while resolving may wait on the store: later param diffs and uploads make no call to learn them.
        self._logged_params = dict(run.data.params)
        self._artifact_uri = run.info.artifact_uri

    def _find_run(self) -> tuple[Run | None, Origin | None]:
        if self._requested_run_id:
            return self._get_existing_run(self._requested_run_id, "run_id"), "run_id"
        active = mlflow.active_run()
        if active is not None:
            try:
                return self.client.get_run(active.info.run_id), "active_run"
            except MlflowException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
                log.warning(
                    "An MLflow run (%s) is active, but it is not in this logger's tracking store %s; "
                    "starting a separate run. Pass tracking_uri=mlflow.get_tracking_uri() to log into it.",
                    active.info.run_id,
                    self.tracking_uri,
                )
        env_run_id = os.environ.get("MLFLOW_RUN_ID")
        if env_run_id:
            return self._get_existing_run(env_run_id, "MLFLOW_RUN_ID"), "env_run_id"
        if self._checkpoint_run_id:
            return self._checkpoint_run(self._checkpoint_run_id), "checkpoint"
        return None, None

    def _checkpoint_run(self, run_id: str) -> Run | None:
        """The run a checkpoint was trained in, if this store has it (and it is not deleted)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning(
                "The checkpoint being resumed was trained in MLflow run %s, which is not in the tracking store %s "
                "(or is deleted); this fit is recorded in a new run.",
                run_id,
                self.tracking_uri,
            )
            return None
        return run

    def _get_existing_run(self, run_id: str, source: str) -> Run:
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise RunNotFoundError(
                    f"No MLflow run with id {run_id!r} (from {source}) in the tracking store {self.tracking_uri}. "
                    f"Check {source} and the tracking URI, or leave {source} unset to start a new run."
                ) from exc
            raise
        if run.info.lifecycle_stage == "deleted":
            raise DeletedRunError(
                f"MLflow run {run_id!r} (from {source}) is deleted. Restore it with "
                f"`mlflow runs restore --run-id {run_id}` (MLFLOW_TRACKING_URI={self.tracking_uri}), "
                f"or leave {source} unset to start a new run."
            )
        return run

    def _experiment_name_of(self, experiment_id: str) -> str:
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = str(self.client.get_experiment(experiment_id).name)
        return self._experiment_names[experiment_id]

    def _experiment_id_for_new_run(self) -> str:
        name = self._experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name and os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = name or DEFAULT_EXPERIMENT_NAME
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                created = str(self.client.create_experiment(name, artifact_location=self._artifact_location))
                self._experiment_names[created] = name
                return created
            except MlflowException as exc:
                # Another process (a DDP rank, a parallel job) created it first.
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = self.client.get_experiment_by_name(name)
                assert experiment is not None
        if experiment.lifecycle_stage == "deleted":
            raise DeletedExperimentError(
                f"The MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted, and a deleted "
                f"experiment's name cannot be reused. Restore it with `mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`, delete it for good with `mlflow gc "
                f"--experiment-ids {experiment.experiment_id}` (MLFLOW_TRACKING_URI={self.tracking_uri}), "
                f"or choose another experiment_name."
            )
        self._experiment_names[str(experiment.experiment_id)] = name
        return str(experiment.experiment_id)

    def _create_run(self) -> Run:
        # The git calls (subprocesses) run while the experiment is looked up on the server: both mostly wait.
        with ThreadPoolExecutor(1, thread_name_prefix="mlflow-code-state") as pool:
            code = pool.submit(code_state, source_dir())
            experiment_id = self._experiment_id_for_new_run()
            code_tags = code.result()
        tags = dict(self._tags)
        tags[OWNER_TAG] = OWNER
        tags[HEARTBEAT_TAG] = heartbeat()
        if self._parent_run_id:
            self._get_existing_run(self._parent_run_id, "parent_run_id")
            tags[MLFLOW_PARENT_RUN_ID] = self._parent_run_id
        # MLflow's git context records the remote URL as configured, credentials included, and no branch or
        # dirty flag (and its first use imports GitPython, 60 ms): ours replace it. A plugin's git tags too.
        tags = resolve_tags(tags, ignore=[GitRunContext])  # type: ignore[list-item]  # classes, as MLflow uses it
        for key in [k for k in tags if k.startswith(GIT_TAG_PREFIX)]:
            del tags[key]
        tags.update(code_tags)
        return self.client.create_run(experiment_id, run_name=self._run_name, tags=tags)

    def _record_code_diff(self, tags: Mapping[str, str]) -> None:
        """For a dirty tree: the diff against HEAD (capped at 1 MB) and the untracked files, as artifacts."""
        if tags.get(GIT_TAG_PREFIX + "dirty") != "true":
            return
        folder = source_dir()
        diff = code_diff(folder)
        if diff:
            self.uploader.upload_text(diff, "code/diff.patch")
        untracked = untracked_files(folder)
        if untracked:
            self.uploader.upload_text("\n".join(untracked) + "\n", "code/untracked.txt")

    def _attach(self, run: Run) -> None:
        """Apply tags and name to a run found elsewhere; reopen it if it had ended."""
        status = run.info.status
        running = status == RunStatus.to_string(RunStatus.RUNNING)
        ours = run.data.tags.get(OWNER_TAG) == OWNER
        abandoned = running and ours and heartbeat_stopped(run.data.tags.get(HEARTBEAT_TAG))
        if abandoned:
            log.warning(
                "MLflow run %s is RUNNING, but the process that wrote into it is gone (heartbeat %s): it was "
                "killed without ending the run. This process continues the run and ends it.",
                run.info.run_id,
                run.data.tags.get(HEARTBEAT_TAG),
            )
        tags: dict[str, str] = {}
        if self._origin != "checkpoint" and not abandoned and (self._origin == "active_run" or running):
            # Someone else keeps this run open (a `with mlflow.start_run()`, a pipeline): leave it as found.
            self._owns_run = bool(self._end_run)
            self._running = True
        else:
            # A run being continued (an ended one, or one resumed from its own checkpoint) is RUNNING while we
            # log. A run of this package's then ends the usual way; anyone else's gets back the status it was
            # found in (unless this session fails).
            self._owns_run = self._end_run is not False
            if not ours:
                self._found_status = status
            if not running:
                self.client.update_run(run.info.run_id, status="RUNNING")
            self._running = True
            tags[HEARTBEAT_TAG] = heartbeat()
        if self._ends_on_failure:
            _open_sessions.add(self)  # a pipeline step that fails ends the run (nobody else will)
        tags.update({k: v for k, v in code_state(source_dir()).items() if k not in run.data.tags})
        tags.update(self._tags)
        if self._run_name:
            tags[MLFLOW_RUN_NAME] = self._run_name
        if self._parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self._parent_run_id
        self.set_tags(tags)

    # ---- writes -----------------------------------------------------------------------------

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            run_id = self.run_id  # resolving first: attaching to a run queues writes of its own
            with self._lock:
                if self._writer is None:
                    self._writer = RunWriter(
                        make_transport(self.tracking_uri, self.client),
                        run_id,
                        self._journal(run_id),
                        synchronous=self._synchronous,
                        heartbeat=lambda: [(HEARTBEAT_TAG, heartbeat())],
                        heartbeat_interval=HEARTBEAT_INTERVAL,
                        artifacts=RunArtifacts(self.client, run_id, self.tracking_uri, self._artifact_uri),
                    )
        return self._writer

    @property
    def has_uploader(self) -> bool:
        return self._uploader is not None

    @property
    def uploader(self) -> ArtifactUploader:
        """Background uploads into this run (checkpoints, figures)."""
        if self._uploader is None:
            run_id = self.run_id
            staging = Path(self.save_dir) / ".mlflow-uploads"
            # Its own RunArtifacts: a connection serves one thread, and the writer's serves journaled changes.
            artifacts = RunArtifacts(self.client, run_id, self.tracking_uri, self._artifact_uri)
            self._uploader = ArtifactUploader(
                self.client, run_id, artifacts, staging, hand_off=self.writer.change_artifacts  # this run's writer
            )
        self._fresh = False
        return self._uploader

    def _journal(self, run_id: str) -> Journal:
        """This run's journal; one left by an earlier process on the same save_dir is replayed first."""
        path = journal_path(self.save_dir, run_id)
        if path.exists():
            log.info("Replaying undelivered writes of MLflow run %s from %s", run_id, path)
        return Journal.for_run(path, Header(run_id=run_id, tracking_uri=self.tracking_uri))

    def ensure_running(self) -> None:
        """Mark an owned run RUNNING again before new work lands in it (``fit`` then ``test``)."""
        if self._running:
            return
        _ = self.run_id  # resolving marks a created or attached run as running
        with self._lock:
            if not self._running and self._owns_run:
                self.writer.set_status("RUNNING")
            elif self._writer is not None:
                self._writer.set_heartbeat(True)
            if self._owns_run or self._ends_on_failure:
                _open_sessions.add(self)
            self._running = True

    @property
    def _ends_on_failure(self) -> bool:
        """A failure ends the run: always, but for a user's own active run (their ``with`` block ends it)."""
        return self._origin != "active_run" or bool(self._end_run)

    def log_metrics(self, points: list[MetricPoint]) -> None:
        if not self._running:
            self.ensure_running()
        self._fresh = False
        self.writer.log_metrics(points)

    def stage_ends_soon(self, points_left: int) -> None:
        """The stage's last points are being logged: keep what waits for the server small from now on."""
        if self._writer is not None:
            self._writer.begin_tail(points_left)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self.ensure_running()
            self.writer.set_tags(list(tags.items()))

    def logged_params(self) -> dict[str, str]:
        """Params the run already holds (read when the run is resolved, then kept up to date locally)."""
        if self._logged_params is None:
            self._logged_params = dict(self.client.get_run(self.run_id).data.params)
        return self._logged_params

    def log_params(self, params: Mapping[str, str]) -> None:
        if params:
            self.ensure_running()
            self._fresh = False
            self.logged_params().update(params)
            self.writer.log_params(list(params.items()))

    def log_datasets(self, splits: Mapping[str, str | os.PathLike[str] | Fingerprint]) -> dict[str, Fingerprint]:
        """One dataset input per split, with a git/DVC source; returns the fingerprints."""
        self.ensure_running()
        self._fresh = False
        records, fingerprints = dataset_records(splits)
        self.writer.log_inputs(records)
        return fingerprints

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        if self._writer is None:
            return DeliveryReport()
        return self._writer.flush(timeout)

    def end(self, status: FinalStatus, timeout: float | None = None, *, at_exit: bool = False) -> DeliveryReport:
        """Give the run its final status after everything queued, and wait for delivery.

        An owned run ends; a borrowed one stays open on success, and ends FAILED / KILLED when this process
        fails (nobody else will end a pipeline's run then), except a user's own active run. What the store does
        not take within the wait stays in the journal.
        """
        if self._run_id is None:
            return DeliveryReport()
        wait = self._flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        if self._uploader is not None:
            # Uploads the store has not taken yet become the writer's records, ahead of the final status.
            self._uploader.park(max(wait / 2, 0.5))
        with self._lock:
            if status != "FINISHED":
                self._worst_status = status
            failed = self._worst_status is not None
            if self._running and (self._owns_run or (failed and self._ends_on_failure)):
                # A failed fit stays FAILED through a later successful test(); someone else's run gets its
                # own status back.
                final = self._worst_status or self._found_status or status
                self.writer.set_status(final, int(time.time() * 1000))
            elif self._running and self._may_create():
                # Left open on purpose (a pipeline step, the user's own run): not a dead process's run.
                self.writer.set_heartbeat(False)
                self.writer.set_tags([(HEARTBEAT_TAG, RELEASED)])
            self._running = False
            _open_sessions.discard(self)
        report = DeliveryReport()
        if self._writer is not None:
            # The whole end waits at most the timeout: the uploads, the flush, then parking what is left in the
            # journal.
            budget = max(deadline - time.monotonic() - PARK_RESERVE_S, 0.0)
            report = self._writer.flush(budget, unless_unreachable=at_exit)
            if report.pending:
                parked = self._writer.park(max(deadline - time.monotonic(), 0.1))
                report.pending, report.journal, report.lost = parked.pending, parked.journal, parked.lost
                report.halted = report.halted or parked.halted
        return report

    def resume_from_checkpoint(self, run_id: str) -> None:
        """A fit resumes from a checkpoint trained in ``run_id``: continue that run, not a new one.

        Before the run is resolved, the checkpoint's run becomes the run (after an explicit ``run_id``, the
        active run and ``MLFLOW_RUN_ID``). A run this session created moments ago for the fit (Lightning's
        ModelCheckpoint asks for the run id before the checkpoint is read) and wrote nothing into is deleted
        for it. Otherwise the session keeps its run.
        """
        with self._lock:
            if self._run_id == run_id:
                return
            if self._run_id is not None:
                if not (self._fresh and self._origin == "created") or self._checkpoint_run(run_id) is None:
                    return
                self._discard_fresh_run()
            self._checkpoint_run_id = run_id
            self._resolve()

    def _discard_fresh_run(self) -> None:
        """Delete the run this session just created and wrote nothing into; forget it."""
        fresh = self._run_id
        assert fresh is not None
        if self._writer is not None:
            self._writer.flush(self._flush_timeout)
            self._writer.discard()
        if self._uploader is not None:
            self._uploader.flush(self._flush_timeout)
        self.client.set_terminated(fresh, "KILLED")  # in the trash, it must not look like a live run
        self.client.delete_run(fresh)
        _open_sessions.discard(self)
        self._forget_run()

    def metric_steps(self) -> dict[str, int]:
        """The last step of every metric the run holds (what a resumed fit must not send again)."""
        self.flush(self._flush_timeout)  # a journal an earlier process left is part of the run
        proto = self.client.get_run(self.run_id).data.to_proto()
        return {metric.key: int(metric.step) for metric in proto.metrics}

    # ---- pickling (a Trainer holding the logger can be pickled, ddp_spawn) -------------------

    def __getstate__(self) -> dict[str, object]:
        if self._run_id is None and self._may_create():
            # ddp_spawn pickles the logger for its workers: they must all log into one run that this
            # (main) process knows too, so the run is resolved before the copy is made.
            self._resolve()
        state = self.__dict__.copy()
        state["_client"] = None
        state["_writer"] = None
        state["_uploader"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # A copy in another process (a ddp_spawn worker) marks the run RUNNING again before it writes: the
        # process it came from may have ended a stage since the run was resolved.
        self._running = False


#: Sessions whose run is RUNNING because of them; strong references, so a logger dropped without
#: finalize() still gets its writes delivered (or journaled) and its run ended at exit.
_open_sessions: set[RunSession] = set()


@atexit.register
def _end_runs_left_open() -> None:
    """No run this package opened stays RUNNING after the interpreter exits."""
    # An uncaught exception leaves sys.last_value; a Jupyter kernel sets it for every cell that raised, long
    # past, and a kernel shutting down is not a crash (a fit that failed in a cell already ended its run).
    uncaught = None if "ipykernel" in sys.modules else getattr(sys, "last_value", None)
    status: FinalStatus = "FINISHED"
    if isinstance(uncaught, KeyboardInterrupt):
        status = "KILLED"
    elif uncaught is not None:
        status = "FAILED"
    end_open_runs(status)


def end_open_runs(status: FinalStatus) -> None:
    """End every run still open because of a session of this process (at exit)."""
    for session in list(_open_sessions):
        try:
            report = session.end(status, timeout=min(30.0, session.flush_timeout), at_exit=True)
            message = report.undelivered_message(session._run_id or "")
            if message:
                log.warning(message)
        except Exception as exc:  # at exit, report and carry on with the next run
            log.warning("Could not end MLflow run %s at exit: %s", session._run_id, exc)
