"""A fit run the way a terminal runs it (``python link_fit.py ...``), for the tests of the link a fit prints.

Only what the test reads goes to stdout: Lightning's own messages are silenced.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlflow
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--no-run-link", action="store_true", help="MLflowLogger(show_run_link=False)")
    parser.add_argument("--test", action="store_true", help="trainer.test() after the fit")
    parser.add_argument("--fail-at-step", type=int, default=None)
    parser.add_argument("--in-active-run", action="store_true", help="the fit inside `with mlflow.start_run()`")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def fit() -> None:
        logger = MLflowLogger(
            experiment_name=args.experiment,
            run_name=args.run_name,
            tracking_uri=args.tracking_uri,
            show_run_link=not args.no_run_link,
        )
        trainer = make_trainer(
            logger, max_epochs=1, devices=args.devices, strategy=args.strategy, enable_model_summary=False
        )
        model = TinyModel(fail_at_step=args.fail_at_step)
        trainer.fit(model, datamodule=TinyData())
        if args.test:
            trainer.test(model, datamodule=TinyData())

    if args.in_active_run:
        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(args.experiment)
        with mlflow.start_run(run_name=args.run_name):
            fit()
    else:
        fit()


if __name__ == "__main__":
    main()
