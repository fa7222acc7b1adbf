"""Runs left RUNNING by a process that died without ending them (SIGKILL, the OOM killer, a SLURM time limit):
told apart from live runs by their heartbeat, and ended KILLED with the reason (``lightning-mlflow runs
close-stale``).

A run is stale only when its heartbeat says its process is gone (``Heartbeat.stopped``: the pid is dead on this
host, or the heartbeat is older than ``HEARTBEAT_STALE_AFTER`` from another host). A run without this package's
heartbeat is someone else's, and a run left open on purpose for a pipeline's next step says ``released``:
both are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from lightning_mlflow_ext.delivery.transport import make_transport
from lightning_mlflow_ext.delivery.writer import DeliveryReport, RunWriter
from lightning_mlflow_ext.run.channels import deliver_by, run_journal
from lightning_mlflow_ext.run.forensics import stale_run_tags
from lightning_mlflow_ext.run.heartbeat import Heartbeat, parse_heartbeat
from lightning_mlflow_ext.run.tags import HEARTBEAT_TAG, RELEASED

__all__ = ["RunningRuns", "close_stale_run", "running_runs", "still_stale"]


@dataclass
class RunningRuns:
    """The RUNNING runs of some experiments, by what their heartbeat says."""

    stale: list[tuple[Run, Heartbeat]] = field(default_factory=list)
    live: list[tuple[Run, Heartbeat]] = field(default_factory=list)
    released: list[Run] = field(default_factory=list)  # left open on purpose for a pipeline's next step
    not_ours: list[Run] = field(default_factory=list)  # no heartbeat of this package: another tool's run

    def add(self, run: Run) -> None:
        value = run.data.tags.get(HEARTBEAT_TAG)
        beat = parse_heartbeat(value)
        if beat is not None:
            (self.stale if beat.stopped else self.live).append((run, beat))
        elif value == RELEASED:
            self.released.append(run)
        else:
            self.not_ours.append(run)  # also a heartbeat value this version cannot read: never ended on a guess


def running_runs(client: MlflowClient, experiment_ids: Sequence[str]) -> RunningRuns:
    """Every RUNNING run of ``experiment_ids``, sorted by what its heartbeat says."""
    found = RunningRuns()
    for run in _search_running(client, experiment_ids):
        found.add(run)
    return found


def _search_running(client: MlflowClient, experiment_ids: Sequence[str]) -> Iterator[Run]:
    token: str | None = None
    while True:
        page = client.search_runs(
            list(experiment_ids),
            filter_string="attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def still_stale(client: MlflowClient, run_id: str) -> Heartbeat | None:
    """The run's heartbeat, read again just before ending it, if it is still RUNNING and stale: a resumed fit may
    have taken the run over (and renewed its heartbeat) since it was listed."""
    run = client.get_run(run_id)
    beat = parse_heartbeat(run.data.tags.get(HEARTBEAT_TAG))
    if run.info.status != "RUNNING" or beat is None or not beat.stopped:
        return None
    return beat


def close_stale_run(
    client: MlflowClient, tracking_uri: str, run: Run, beat: Heartbeat, *, save_dir: str, timeout: float
) -> DeliveryReport:
    """End ``run`` KILLED, tagged ``failure.kind=heartbeat_stopped`` with its last heartbeat, through the run's
    writer (what the store does not take within ``timeout`` stays in ``save_dir``'s journal, for ``sync``).

    The run's end time is its last heartbeat: the process died within a heartbeat interval of it, and the run's
    duration then says how long it really ran, however late this runs.
    """
    run_id = run.info.run_id
    writer = RunWriter(make_transport(tracking_uri, client), run_id, run_journal(save_dir, run_id, tracking_uri))
    writer.set_tags(list(stale_run_tags(beat).items()))
    writer.set_status("KILLED", max(int(beat.written * 1000), int(run.info.start_time or 0)))
    return deliver_by(writer, time.monotonic() + timeout, at_exit=False)
