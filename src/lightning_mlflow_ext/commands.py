"""The ``lightning-mlflow`` command: look at a run from a terminal, and deliver what a logger could not send.

One small function per subcommand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime

from mlflow import MlflowClient

from lightning_mlflow_ext import __version__
from lightning_mlflow_ext.delivery.artifact_store import RunArtifacts
from lightning_mlflow_ext.delivery.journal import Journal, find_journals
from lightning_mlflow_ext.delivery.transport import make_transport
from lightning_mlflow_ext.delivery.writer import RunWriter
from lightning_mlflow_ext.errors import JournalCorruptError, JournalInUseError
from lightning_mlflow_ext.run.tracking import resolve_tracking_uri
from lightning_mlflow_ext.ui import run_link


def _show(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    run = client.get_run(args.run_id)
    info, data = run.info, run.data
    print(f"run        {info.run_id}  ({info.run_name})")
    print(f"status     {info.status}")
    print(f"experiment {info.experiment_id}")
    print(f"link       {run_link(uri, info.experiment_id, info.run_id)}")
    print(f"params     {len(data.params)}")
    for key in sorted(data.metrics):
        history = client.get_metric_history(info.run_id, key)
        steps = sorted({point.step for point in history})
        span = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps"
        print(f"metric     {key} = {data.metrics[key]:.6g}  ({len(history)} points, {span})")
    return 0


def _sync(args: argparse.Namespace) -> int:
    journals = find_journals(args.path)
    if not journals:
        print(f"Nothing to deliver: no journal at {args.path}")
        return 0
    failed = 0
    for path in journals:
        try:
            journal = Journal.open_existing(path)
        except FileNotFoundError:
            continue  # delivered (and removed) by another process since it was found
        except (JournalInUseError, JournalCorruptError) as exc:
            failed += 1
            print(f"lightning-mlflow sync: {exc}", file=sys.stderr)
            continue
        try:
            failed += 0 if _deliver_journal(journal, args.tracking_uri, args.timeout) else 1
        finally:
            journal.close()
    return 1 if failed else 0


def _deliver_journal(journal: Journal, tracking_uri: str | None, timeout: float) -> bool:
    """Deliver one journal file, in order; True when nothing is left in it."""
    uri = resolve_tracking_uri(tracking_uri or journal.header.tracking_uri)
    run_id = journal.header.run_id
    points = journal.pending_points()
    client = MlflowClient(uri)
    writer = RunWriter(make_transport(uri, client), run_id, journal, artifacts=RunArtifacts(client, run_id, uri))
    report = writer.flush(timeout)
    for error in report.errors:
        print(f"  refused: {error}")
    if report.pending:
        writer.park()
        why = report.halted or f"{uri} did not take them within {timeout:.0f} s"
        print(f"run {run_id}: {report.pending} of {points} points still pending ({why}); they stay in {journal.path}")
        return False
    print(f"run {run_id}: delivered {points - report.rejected} points to {uri}")
    return True


def _close_stale(args: argparse.Namespace) -> int:
    from lightning_mlflow_ext.run.stale_runs import close_stale_run, running_runs, still_stale

    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    if args.experiment is not None:
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            print(f"lightning-mlflow runs close-stale: no experiment {args.experiment!r} at {uri}", file=sys.stderr)
            return 2
        experiments = {experiment.experiment_id: experiment.name}
    else:
        experiments = {e.experiment_id: e.name for e in client.search_experiments(max_results=50_000)}
    runs = running_runs(client, list(experiments))
    verb, closed, failed = ("would close" if args.dry_run else "closed"), 0, 0
    for run, listed in runs.stale:
        info = run.info
        beat = listed if args.dry_run else still_stale(client, info.run_id)
        if beat is None:
            print(f"left     {info.run_id} ({info.run_name}): taken up again since it was listed")
            continue
        if not args.dry_run:
            message = close_stale_run(client, uri, run, beat, save_dir=".", timeout=args.timeout).undelivered_message(
                info.run_id
            )
            if message:
                failed += 1
                print(message, file=sys.stderr)
        closed += 1
        stopped = datetime.fromtimestamp(beat.written).isoformat(sep=" ", timespec="seconds")
        print(
            f"{verb} {info.run_id} ({info.run_name}) in {experiments[info.experiment_id]!r} as KILLED: its heartbeat "
            f"stopped at {stopped} ({beat.host} pid {beat.pid})"
        )
    for run, beat in runs.live:
        age = max(time.time() - beat.written, 0.0)
        alive = f"alive, heartbeat {age:.0f} s ago, {beat.host} pid {beat.pid}"
        print(f"left     {run.info.run_id} ({run.info.run_name}): {alive}")
    print(
        f"{closed} stale runs {verb}; left alone: {len(runs.live)} live, {len(runs.released)} left open for a "
        f"pipeline's next step, {len(runs.not_ours)} without a lightning-mlflow-ext heartbeat (not ours)"
    )
    return 1 if failed else 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from lightning_mlflow_ext.lineage import DataPathNotFoundError, dataset_source, fingerprint
    from lightning_mlflow_ext.lineage.dataset import LineageDataset

    try:
        fp = fingerprint(args.path, check_remote=not args.no_remote)
    except DataPathNotFoundError as exc:
        print(f"lightning-mlflow lineage: {exc}", file=sys.stderr)
        return 2
    source = dataset_source(fp)
    kind = LineageDataset(source, args.path, fp).source_type
    record = {**fp.to_dict(), "source_type": kind, "source": source.to_dict()}
    print(json.dumps(record, indent=2))
    return 1 if args.check and not fp.reproducible else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-mlflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lightning-mlflow-ext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a run's status, link, params count and metrics")
    show.add_argument("run_id")
    show.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    show.set_defaults(func=_show)
    sync = commands.add_parser(
        "sync",
        help="deliver writes a logger could not send (a journal file, or a save_dir holding journals); "
        "safe to run again: nothing is stored twice",
    )
    sync.add_argument("path")
    sync.add_argument("--tracking-uri", default=None, help="default: the store the journal was written for")
    sync.add_argument("--timeout", type=float, default=120.0, help="seconds to keep retrying (default 120)")
    sync.set_defaults(func=_sync)
    runs = commands.add_parser("runs", help="act on the runs of a tracking store")
    run_commands = runs.add_subparsers(dest="runs_command", required=True)
    close_stale = run_commands.add_parser(
        "close-stale",
        help="end as KILLED the RUNNING runs whose process died without ending them (SIGKILL, the OOM killer, a "
        "time limit), as their heartbeat shows; live runs and runs of other tools are left alone",
    )
    close_stale.add_argument("--experiment", default=None, help="only this experiment (default: every experiment)")
    close_stale.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    close_stale.add_argument("--dry-run", action="store_true", help="print what would be closed, change nothing")
    close_stale.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the store per run")
    close_stale.set_defaults(func=_close_stale)
    lineage = commands.add_parser(
        "lineage", help="print, as JSON, the fingerprint and dataset source a run would record for a data path"
    )
    lineage.add_argument("path")
    lineage.add_argument("--no-remote", action="store_true", help="do not ask the DVC remote whether it holds the data")
    lineage.add_argument(
        "--check", action="store_true", help="exit 1 unless data and code are committed (and DVC data pushed)"
    )
    lineage.set_defaults(func=_lineage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
