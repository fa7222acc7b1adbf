"""RunSession: the one MLflow run a training writes into, and the one object the Lightning side talks to.

It puts the parts together: which run (``resolve``), who ends it and with which status (``lifecycle``), the
heartbeat (``heartbeat``), the code it records (``provenance``), the runs to end at exit (``open_runs``), and
the writer and uploader that get its records to the store (``channels``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from copy import copy

from mlflow import MlflowClient
from mlflow.entities import Run

from lightning_mlflow_ext.delivery.transport import MetricPoint
from lightning_mlflow_ext.delivery.uploader import ArtifactUploader
from lightning_mlflow_ext.delivery.writer import DeliveryReport, RunWriter
from lightning_mlflow_ext.lineage.dataset import dataset_records
from lightning_mlflow_ext.lineage.fingerprint import Fingerprint
from lightning_mlflow_ext.run import open_runs
from lightning_mlflow_ext.run.channels import PARK_RESERVE_S, deliver_by, has_journal, open_uploader, open_writer
from lightning_mlflow_ext.run.heartbeat import heartbeat
from lightning_mlflow_ext.run.lifecycle import FinalStatus, Lifecycle
from lightning_mlflow_ext.run.provenance import code_change_files, missing_code_tags
from lightning_mlflow_ext.run.resolve import FoundRun, Origin, RunRequest, RunResolver
from lightning_mlflow_ext.run.sweeps import Sweep, SweepParent, owns_parent, remember
from lightning_mlflow_ext.run.tags import HEARTBEAT_TAG, RELEASED
from lightning_mlflow_ext.run.tracking import probe_server, refusals_explained

__all__ = ["PARK_RESERVE_S", "FinalStatus", "Origin", "RunSession"]  # what trainer/ imports from here

log = logging.getLogger(__name__)


def _always() -> bool:
    return True


class RunSession:
    """The run one logger writes into, resolved on first use (or by :meth:`resolve`).

    Resolution, first that applies: ``run_id`` -> ``mlflow.active_run()`` -> ``MLFLOW_RUN_ID`` -> the run a
    resumed checkpoint was trained in -> a new run in ``experiment_name`` -> ``MLFLOW_EXPERIMENT_NAME`` ->
    ``"lightning_logs"``. ``may_create`` is False in processes that must not create it (DDP ranks but 0).
    """

    # Tied to the current run: set when it is resolved, dropped by _forget_run().
    _run_id: str | None
    _run_name: str | None
    _experiment_id: str | None
    _resolved_experiment_name: str | None
    _logged_params: dict[str, str] | None
    _artifact_uri: str | None
    _initial_tags: dict[str, str]
    _writer: RunWriter | None
    _uploader: ArtifactUploader | None
    _sweep_parent: SweepParent | None

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
        sweep: Sweep | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.save_dir = save_dir
        self._request = RunRequest(
            run_id=run_id,
            experiment_name=experiment_name,
            run_name=run_name,
            parent_run_id=parent_run_id,
            tags=dict(tags or {}),
            artifact_location=artifact_location,
            sweep=sweep,
        )
        self._flush_timeout = flush_timeout
        self._synchronous = synchronous
        self._server_wait = server_wait
        self._may_create = may_create
        self._life = Lifecycle(end_run)
        self._lock = threading.RLock()
        self._client: MlflowClient | None = None
        self._resolver: RunResolver | None = None
        self._experiment_names: dict[str, str] = {}  # experiment id -> name, as far as this session has seen
        self._checkpoint_run_id: str | None = None
        self._forget_run()

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
    def known_run_id(self) -> str | None:
        """The run id if the run is resolved; None otherwise (never resolves)."""
        return self._run_id

    @property
    def run_id(self) -> str:
        self.resolve()
        assert self._run_id is not None
        return self._run_id

    @property
    def experiment_id(self) -> str:
        self.resolve()
        assert self._experiment_id is not None
        return self._experiment_id

    @property
    def run_name(self) -> str:
        """The run's name as this session set or found it (known since the run was resolved: no request)."""
        self.resolve()
        return self._run_name or self.run_id

    @property
    def status(self) -> str:
        """The run's status as this session leaves it (see ``Lifecycle.status``)."""
        return self._life.status

    @property
    def experiment_name(self) -> str:
        self.resolve()
        assert self._resolved_experiment_name is not None
        return self._resolved_experiment_name

    @property
    def flush_timeout(self) -> float:
        return self._flush_timeout

    @property
    def owns_run(self) -> bool:
        """True when this session ends the run: it created it, or reopened a run that had ended."""
        return self._life.owns_run

    @property
    def origin(self) -> Origin | None:
        return self._life.origin

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
                self._life.known(None)

    @property
    def initial_tags(self) -> dict[str, str]:
        """The tags an attached run already had when this session found it (empty for a created run)."""
        return self._initial_tags

    def begin_fit(self) -> None:
        """A fit (new or resumed) starts: an earlier failure of this run no longer decides its final status."""
        self._life.begin_fit()

    def start_new_run(self) -> None:
        """Forget the current (ended) run: the next write creates a new one. Only for runs this session created."""
        with self._lock:
            if self._writer is not None:
                self._writer.park()
            self._forget_run()

    def _forget_run(self) -> None:
        """Drop everything tied to the current run; the next use resolves (or creates) a run again."""
        self._writer = self._uploader = None
        self._sweep_parent = None
        self._run_id = self._run_name = self._experiment_id = self._resolved_experiment_name = None
        self._logged_params = None
        self._artifact_uri = None
        self._initial_tags = {}
        self._life.forget()
        self._track()

    def _track(self) -> None:
        """Keep the at-exit registry in step with the lifecycle: call after every transition."""
        open_runs.track(self, open_at_exit=self._life.settles_at_exit)

    # ---- resolution -------------------------------------------------------------------------

    def resolve(self) -> None:
        """Find, attach to or create the run now, if it is not known yet (the first use does it otherwise).

        A copy made for another process must be resolved first (ddp_spawn pickles the logger for its workers:
        they must all log into one run, which the process they came from knows too).
        """
        if self._run_id is not None:
            return
        with self._lock:
            if self._run_id is not None:
                return
            probe_server(self.tracking_uri, self._server_wait)
            with refusals_explained(self.tracking_uri):
                self._resolve_checked()

    @property
    def _runs(self) -> RunResolver:
        if self._resolver is None:
            self._resolver = RunResolver(self.client, self.tracking_uri, self._experiment_names)
        return self._resolver

    def _resolve_checked(self) -> None:
        may_create = self._may_create()
        found = self._runs.resolve(self._request, checkpoint_run_id=self._checkpoint_run_id, may_create=may_create)
        self._set_identity(found.run, found.origin)
        if not may_create:
            return  # another rank's run: this process knows it, and never writes into it or ends it
        if found.origin == "created":
            for path, text in code_change_files(found.run.data.tags).items():
                self.uploader.upload_text(text, path)
            self._life.created()
            self._track()
            if found.sweep_parent is not None:
                self._open_sweep_parent(found.sweep_parent)
        else:
            self._initial_tags = dict(found.run.data.tags)
            self._attach(found)
        if has_journal(self.save_dir, found.run.info.run_id):
            _ = self.writer  # an earlier process left undelivered writes: replay them now

    def _open_sweep_parent(self, parent: Run) -> None:
        """The sweep's parent, through a session of its own: one this package created is RUNNING while this
        trial is; the user's own run (the active run, ``MLFLOW_RUN_ID``'s) is left as it is."""
        owned = owns_parent(parent)
        session = RunSession(
            self.tracking_uri,
            run_id=parent.info.run_id,
            synchronous=self._synchronous,
            server_wait=self._server_wait,
            save_dir=self.save_dir,
            flush_timeout=self._flush_timeout,
            end_run=True if owned else None,
        )
        self._sweep_parent = SweepParent(parent.info.run_id, session, owned=owned)
        remember(self._sweep_parent)
        self._sweep_parent.trial_started()

    @property
    def sweep_parent_id(self) -> str | None:
        """The run id of the sweep's parent, when this run is a trial this session created."""
        return None if self._sweep_parent is None else self._sweep_parent.run_id

    def _set_identity(self, run: Run, origin: Origin | None) -> None:
        self._run_id = run.info.run_id
        self._run_name = self._request.run_name or run.info.run_name  # a found run is renamed to the request
        self._life.known(origin)
        self._experiment_id = run.info.experiment_id
        self._resolved_experiment_name = self._runs.experiment_name_of(run.info.experiment_id)
        # Known now, while resolving may wait on the store: later param diffs and uploads make no call to learn them.
        self._logged_params = dict(run.data.params)
        self._artifact_uri = run.info.artifact_uri

    def _attach(self, found: FoundRun) -> None:
        """Apply tags and name to a run found elsewhere; reopen it if it had ended."""
        continues = self._life.attached(
            found.origin, found.status, running=found.running, ours=found.ours, abandoned=found.abandoned
        )
        tags: dict[str, str] = {}
        if continues:
            if not found.running:
                self.client.update_run(found.run.info.run_id, status="RUNNING")
            tags[HEARTBEAT_TAG] = heartbeat()
        self._track()  # a pipeline step that fails ends the run (nobody else will)
        tags.update(missing_code_tags(found.run.data.tags))
        self.set_tags(tags | self._request.tags_for_found(found.run.info.run_id))

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
                if not self._life.replaceable_by_checkpoint or self._runs.checkpoint_run(run_id) is None:
                    return
                self._discard_fresh_run()
            self._checkpoint_run_id = run_id
            self.resolve()

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
        if self._sweep_parent is not None:
            self._sweep_parent.trial_ended("FINISHED", self._flush_timeout)  # the checkpoint's run has its own
        self._forget_run()

    # ---- writes -----------------------------------------------------------------------------

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            run_id = self.run_id  # resolving first: attaching to a run queues writes of its own
            with self._lock:
                if self._writer is None:
                    self._writer = open_writer(
                        self.client, self.tracking_uri, run_id, self.save_dir, self._artifact_uri, self._synchronous
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
            self._uploader = open_uploader(
                self.client, self.tracking_uri, run_id, self.save_dir, self._artifact_uri, self.writer
            )
        self._life.wrote()
        return self._uploader

    def ensure_running(self) -> None:
        """Mark an owned run RUNNING again before new work lands in it (``fit`` then ``test``)."""
        if self._life.running:
            return
        self.resolve()  # resolving marks a created or attached run as running
        with self._lock:
            if self._life.start_stage():
                self.writer.set_status("RUNNING")
                if self._sweep_parent is not None:
                    self._sweep_parent.trial_started()
            elif self._writer is not None:
                self._writer.set_heartbeat(True)
            self._track()

    def log_metrics(self, points: list[MetricPoint]) -> None:
        # Every logging step of the training loop: one check when the run is already running and written to.
        writer = self._writer
        if writer is None or not self._life.running_with_content:
            self._content_lands()
            writer = self.writer
        writer.log_metrics(points)

    def _content_lands(self) -> None:
        """Work beyond tags lands in the run: a stage runs, and the run is no longer a placeholder."""
        if not self._life.running:
            self.ensure_running()
        self._life.wrote()

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
            self._content_lands()
            self.logged_params().update(params)
            self.writer.log_params(list(params.items()))

    def log_datasets(self, splits: Mapping[str, str | os.PathLike[str] | Fingerprint]) -> dict[str, Fingerprint]:
        """One dataset input per split, with a git/DVC source; returns the fingerprints."""
        self._content_lands()
        records, fingerprints = dataset_records(splits)
        self.writer.log_inputs(records)
        return fingerprints

    def metric_steps(self) -> dict[str, int]:
        """The last step of every metric the run holds (what a resumed fit must not send again)."""
        self.flush(self._flush_timeout)  # a journal an earlier process left is part of the run
        proto = self.client.get_run(self.run_id).data.to_proto()
        return {metric.key: int(metric.step) for metric in proto.metrics}

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        if self._writer is None:
            return DeliveryReport()
        return self._writer.flush(timeout)

    def end(self, status: FinalStatus, timeout: float | None = None, *, at_exit: bool = False) -> DeliveryReport:
        """Settle the run as the lifecycle decides (see ``Lifecycle.end``) after everything queued, and wait for
        delivery. What the store does not take within the wait stays in the journal."""
        if self._run_id is None:
            return DeliveryReport()
        wait = self._flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        if self._uploader is not None:
            # Uploads the store has not taken yet become the writer's records, ahead of the final status.
            self._uploader.park(max(wait / 2, 0.5))
        with self._lock:
            ending = self._life.end(status, may_release=self._may_create())
            if ending.status is not None:
                self.writer.set_status(ending.status, int(time.time() * 1000))
            elif ending.release:
                # Left open on purpose (a pipeline step, the user's own run): not a dead process's run.
                self.writer.set_heartbeat(False)
                self.writer.set_tags([(HEARTBEAT_TAG, RELEASED)])
            self._track()
        if self._sweep_parent is not None:
            self._sweep_parent.trial_ended(status, max(deadline - time.monotonic(), PARK_RESERVE_S), at_exit=at_exit)
        if self._writer is None:
            return DeliveryReport()
        # The whole end waits at most the timeout: the uploads, the flush, then parking what is left in the journal.
        return deliver_by(self._writer, deadline, at_exit=at_exit)

    # ---- pickling (a Trainer holding the logger can be pickled, ddp_spawn) -------------------

    def __getstate__(self) -> dict[str, object]:
        """A copy as it is now, without side effects: the caller resolves first when the copy must carry the run
        (``MLflowLogger.__getstate__`` does, for ddp_spawn)."""
        state = self.__dict__.copy()
        state["_client"] = None
        state["_resolver"] = None
        state["_writer"] = None
        state["_uploader"] = None
        state["_sweep_parent"] = None  # the process that created the trial keeps the parent's status
        state["_lock"] = None
        state["_life"] = copy(self._life)  # the copy's transitions are its own
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # A copy in another process (a ddp_spawn worker) marks the run RUNNING again before it writes: the
        # process it came from may have ended a stage since the run was resolved.
        self._life.copied()
