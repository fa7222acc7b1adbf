"""The logger's failure forensics: it keeps the process's output from a stage's start (global rank 0), notes the
exception the bridge reports with the Trainer's step and epoch, and records both when the stage ends failed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lightning_mlflow_ext.run.forensics import Failure, failure_kind, record_failure
from lightning_mlflow_ext.run.output_tail import OutputTail
from lightning_mlflow_ext.trainer.distributed import is_global_rank_zero
from lightning_mlflow_ext.trainer.namespaces import sigterm_exception_types

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mlflow_ext.run.session import FinalStatus, RunSession
    from lightning_mlflow_ext.values.redaction import Redactor

log = logging.getLogger(__name__)


class FailureForensics:
    """A stage's failure, as the run records it (``run.forensics``): the logger's part for it."""

    def __init__(self, session: RunSession, redactor: Redactor) -> None:
        self._session = session
        self._redactor = redactor
        self._output = OutputTail()
        self._failure: Failure | None = None
        self._interrupted = False

    @property
    def interrupted(self) -> bool:
        """The stage stopped on Ctrl-C or SIGTERM: the run ends KILLED, not FAILED."""
        return self._interrupted

    def watch(self) -> None:
        """A stage starts: keep the process's output from now on (global rank 0, the rank that writes)."""
        if is_global_rank_zero():
            self._output.start()

    def note(self, exception: BaseException, trainer: pl.Trainer | None) -> None:
        """The stage stops on ``exception``, at the trainer's step. Every rank learns whether it was interrupted;
        only global rank 0, which records it, keeps the exception (its traceback holds the stage's tensors)."""
        kind = failure_kind(exception, terminated=isinstance(exception, sigterm_exception_types()))
        self._interrupted = kind in ("interrupted", "terminated")
        if is_global_rank_zero():
            step = None if trainer is None else int(trainer.global_step)
            epoch = None if trainer is None else int(trainer.current_epoch)
            self._failure = Failure(exception, kind, global_step=step, epoch=epoch)

    def record(self, final: FinalStatus) -> None:
        """The stage ends ``final``: unless it succeeded, queue the noted failure into the run, ahead of the final
        status. A failure is recorded once."""
        failure, self._failure = self._failure, None
        if final == "FINISHED" or failure is None or not self._session.resolved:
            return
        try:
            record_failure(self._session, failure, self._output.tail(), self._redactor)
        except Exception as exc:  # the stage's own exception is what the user must see
            log.warning("Could not record why MLflow run %s failed: %s", self._session.known_run_id, exc)

    def stop(self) -> None:
        """The stage is over: stop keeping output (the streams are restored when nothing else keeps it)."""
        self._failure, self._interrupted = None, False
        self._output.stop()
