"""The ``lightning-mlflow`` command: look at what a run recorded, from a terminal.

Subcommands are small and read-only unless their name says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlflow import MlflowClient

from lightning_mlflow_ext import __version__
from lightning_mlflow_ext.tracking import resolve_tracking_uri
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-mlflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lightning-mlflow-ext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a run's status, link, params count and metrics")
    show.add_argument("run_id")
    show.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    show.set_defaults(func=_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
