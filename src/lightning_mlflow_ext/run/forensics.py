"""What a run records about the failure that ended it, so that nobody needs the job's log files to know why.

Tags: the kind of failure, the exception's type and message, the global step and epoch training stopped at.
Artifacts: the full traceback (``failure/traceback.txt``) and the process's last output
(``failure/output_tail.txt``). Every text has its secrets hidden first (``values.secret_text``). Everything is
queued on the run's writer and uploader like any other write: nothing here waits for the store.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from lightning_mlflow_ext.run.tags import (
    FAILURE_EPOCH_TAG,
    FAILURE_EXCEPTION_TAG,
    FAILURE_KIND_TAG,
    FAILURE_LAST_HEARTBEAT_TAG,
    FAILURE_MESSAGE_TAG,
    FAILURE_OUTPUT_FILE,
    FAILURE_STEP_TAG,
    FAILURE_TRACEBACK_FILE,
    MAX_TAG_VALUE,
)
from lightning_mlflow_ext.values.names import truncate_value
from lightning_mlflow_ext.values.secret_text import TextRedactor, secret_values

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.heartbeat import Heartbeat
    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.values.redaction import Redactor

__all__ = ["Failure", "FailureKind", "failure_kind", "is_cuda_oom", "record_failure", "stale_run_tags"]

#: ``exception``: an error; ``cuda_oom``: the GPU ran out of memory; ``interrupted``: Ctrl-C (KeyboardInterrupt);
#: ``terminated``: SIGTERM (a scheduler's preemption or time limit); ``heartbeat_stopped``: the process died
#: without ending its run (SIGKILL, the OOM killer), found later by ``lightning-mlflow runs close-stale``.
FailureKind = Literal["exception", "cuda_oom", "interrupted", "terminated", "heartbeat_stopped"]

#: What a RuntimeError says when PyTorch's CUDA allocator gives up (before ``torch.cuda.OutOfMemoryError``).
_CUDA_OOM_MESSAGE = "CUDA out of memory"


@dataclass(frozen=True)
class Failure:
    """Why and where a stage stopped."""

    exception: BaseException
    kind: FailureKind
    global_step: int | None = None
    epoch: int | None = None


def is_cuda_oom(exception: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError`` (any torch version's), or a RuntimeError saying "CUDA out of memory", as
    the exception itself or what caused it (a user's wrapper around it). Read from names: no torch import."""
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(c.__name__ == "OutOfMemoryError" and c.__module__.startswith("torch") for c in type(current).mro()):
            return True
        if isinstance(current, RuntimeError) and _CUDA_OOM_MESSAGE in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def failure_kind(exception: BaseException, *, terminated: bool = False) -> FailureKind:
    """The kind of a stage's failure; ``terminated``: the exception is Lightning's answer to SIGTERM."""
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted"
    if terminated:
        return "terminated"
    return "cuda_oom" if is_cuda_oom(exception) else "exception"


def _type_name(exception: BaseException) -> str:
    cls = type(exception)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def failure_tags(failure: Failure, hide: TextRedactor) -> dict[str, str]:
    """The run's failure tags: kind, exception type and (secrets hidden, cut to MLflow's limit) message, and
    where training stopped when a Trainer said so."""
    tags = {FAILURE_KIND_TAG: failure.kind, FAILURE_EXCEPTION_TAG: _type_name(failure.exception)}
    message = str(failure.exception).strip()
    if message:
        note = f", whole in {FAILURE_TRACEBACK_FILE}"
        tags[FAILURE_MESSAGE_TAG] = truncate_value(hide(message), MAX_TAG_VALUE, note)[0]
    if failure.global_step is not None:
        tags[FAILURE_STEP_TAG] = str(failure.global_step)
    if failure.epoch is not None:
        tags[FAILURE_EPOCH_TAG] = str(failure.epoch)
    return tags


def failure_files(failure: Failure, output_tail: str | None, hide: TextRedactor) -> dict[str, str]:
    """Artifact path -> text: the traceback (with its causes), and the output tail when output was kept (even
    empty: the process wrote nothing)."""
    exception = failure.exception
    lines = traceback.format_exception(type(exception), exception, exception.__traceback__)
    files = {FAILURE_TRACEBACK_FILE: hide("".join(lines))}
    if output_tail is not None:
        files[FAILURE_OUTPUT_FILE] = hide(output_tail)
    return files


def record_failure(session: RunSession, failure: Failure, output_tail: str | None, redactor: Redactor) -> None:
    """Queue the failure's tags and files into the session's run (before its final status is written)."""
    hide = TextRedactor(redactor, secret_values(os.environ, redactor))
    session.set_tags(failure_tags(failure, hide))
    for path, text in failure_files(failure, output_tail, hide).items():
        session.uploader.upload_text(text, path)


def stale_run_tags(beat: Heartbeat) -> dict[str, str]:
    """The tags of a run ended because its writer's heartbeat stopped: the kind and the last heartbeat's time."""
    written = datetime.fromtimestamp(beat.written, tz=timezone.utc).isoformat(timespec="seconds")
    last = f"{written} ({beat.host} pid {beat.pid})"
    return {FAILURE_KIND_TAG: "heartbeat_stopped", FAILURE_LAST_HEARTBEAT_TAG: last}
