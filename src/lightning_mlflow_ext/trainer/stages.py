"""The edges of a Trainer stage (fit, validate, test, predict) that are not about which run: MLflow's own
autolog muted at setup, and the end.

The end waits ``flush_timeout`` at most: uploads get most of it, never all (the final status must still be
sent); whatever is left stays in the journal and is reported once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lightning_mlflow_ext.run.session import PARK_RESERVE_S, FinalStatus
from lightning_mlflow_ext.trainer.coexist import mute_mlflow_autolog_metrics
from lightning_mlflow_ext.trainer.summaries import trainer_callbacks

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.trainer.run_notice import RunLinks
    from lightning_mlflow_ext.warn_once import WarnOnce

log = logging.getLogger(__name__)

#: Lightning ran a stage with the logger, but the bridge's setup never handed it the Trainer.
NO_BRIDGE_WARNING = (
    "MLflowLogger never saw the Trainer: Lightning did not load this package's callbacks_factory "
    "entry point (is lightning-mlflow-ext pip-installed?). Epoch-level metrics were recorded at the "
    "global step; add lightning_mlflow_ext.trainer.bridge.MLflowTrainerBridge() to the Trainer's "
    "callbacks."
)


def mute_mlflow_autolog(trainer: pl.Trainer, warn_once: WarnOnce) -> None:
    """``mlflow.pytorch.autolog()`` on as well: its callback stops recording metrics, once said."""
    muted = mute_mlflow_autolog_metrics(trainer_callbacks(trainer))
    if muted is None:
        return
    warn_once(
        "mlflow-autolog",
        "mlflow.pytorch.autolog() is on as well: lightning_mlflow_ext records the metrics (once per key and "
        "step) and MLflow's autolog callback no longer does for this Trainer"
        + ("." if muted else ", but it could not be muted: its points may be stored twice.")
        + " Call mlflow.pytorch.autolog(disable=True) to record with lightning_mlflow_ext alone.",
    )


def final_status(status: str, interrupted: bool) -> FinalStatus:
    """Lightning's ``finalize`` status as the run's: success, else KILLED after Ctrl-C / SIGTERM, else FAILED."""
    if status in ("success", "finished"):
        return "FINISHED"
    return "KILLED" if interrupted else "FAILED"


def end_stage(session: RunSession, final: FinalStatus, links: RunLinks) -> None:
    """Wait for the uploads and the writes (``flush_timeout`` at most), end the run as the session decides,
    warn about what the store did not take, and show the run's link."""
    deadline = time.monotonic() + session.flush_timeout  # the end of a stage waits this long at most
    _wait_for_uploads(session, deadline)
    report = session.end(final, max(deadline - time.monotonic(), PARK_RESERVE_S))
    message = report.undelivered_message(session.run_id)
    if message:
        log.warning(message)
    if report.rejected:
        log.warning(
            "MLflow run %s: the store refused %d writes: %s",
            session.run_id,
            report.rejected,
            "; ".join(report.errors[:3]),
        )
    links.stage_ended(session, report)


def _wait_for_uploads(session: RunSession, deadline: float) -> None:
    if not session.has_uploader:
        return
    # Uploads get most of the wait, never all of it: the run's final status must still be sent.
    report = session.uploader.flush(max((deadline - time.monotonic()) * 0.8, 0.0))
    if report.failed or report.pending:
        log.warning(
            "MLflow run %s: %d uploads failed and %d are still running: %s",
            session.run_id,
            len(report.failed),
            report.pending,
            "; ".join(report.failed[:3]),
        )
