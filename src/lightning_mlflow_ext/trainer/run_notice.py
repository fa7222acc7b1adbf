"""The link to its run a stage shows when it ends: one line in a terminal, as MLflow's own fluent API prints it,
and a small HTML block in a Jupyter kernel.

Shown on global rank 0 (the logger's ``finalize`` runs there only), once per run and status: ``fit`` then
``test`` of one run show it once; a new run, or a stage that changes the run's status, shows it again. Not shown
when ``show_run_link=False``, when MLflow's own switch ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set, or
when MLflow prints the same line itself (the user's own ``mlflow.start_run()`` run on a tracking server: their
``end_run`` prints it).
"""

from __future__ import annotations

import html
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightning_mlflow_ext.delivery.endpoint import is_http
from lightning_mlflow_ext.ui import experiment_link, is_local_store, links_suppressed, run_link, ui_command

if TYPE_CHECKING:
    from lightning_mlflow_ext.delivery.report import DeliveryReport
    from lightning_mlflow_ext.run.session import RunSession

log = logging.getLogger(__name__)

_STATUS_COLORS = {"FINISHED": "#1a7f37", "FAILED": "#cf222e", "KILLED": "#bc4c00", "RUNNING": "#0969da"}


@dataclass(frozen=True)
class RunNotice:
    """What is shown of a run at the end of a stage. ``ui_command`` is set for a local store, whose link works
    once that command runs."""

    run_name: str
    run_id: str
    status: str
    experiment_name: str
    url: str
    experiment_url: str
    ui_command: str | None = None
    undelivered: int = 0
    sync_command: str | None = None

    def line(self) -> str:
        """The terminal line: MLflow's own ``🏃 View run NAME at: URL``, and for a local store what serves it."""
        text = f"🏃 View run {self.run_name} at: {self.url}"
        return f"{text} (start the UI first: {self.ui_command})" if self.ui_command else text

    def __repr__(self) -> str:  # the text/plain of the notebook block
        return self.line()

    def _repr_html_(self) -> str:
        e = html.escape
        color = _STATUS_COLORS.get(self.status, "inherit")
        parts = [
            f'🏃 MLflow run <a href="{e(self.url)}" target="_blank" rel="noopener"><b>{e(self.run_name)}</b></a>',
            f' <span style="color: {color}; font-weight: bold">{e(self.status)}</span>',
            f' · experiment <a href="{e(self.experiment_url)}" target="_blank" rel="noopener">'
            f"{e(self.experiment_name)}</a>",
        ]
        if self.ui_command:
            parts.append(f"<br><small>Start the UI first: <code>{e(self.ui_command)}</code></small>")
        if self.undelivered:
            waiting = f"{self.undelivered} writes are not in the store yet"
            if self.sync_command:
                waiting += f"; deliver them with <code>{e(self.sync_command)}</code>"
            parts.append(f"<br><small>{waiting}</small>")
        style = "border-left: 3px solid #0194e2; padding: 2px 10px; margin: 4px 0"
        return f'<div class="lightning-mlflow-run" style="{style}">{"".join(parts)}</div>'


def run_notice(session: RunSession, report: DeliveryReport) -> RunNotice | None:
    """What to show of the session's run now that a stage ended; None when there is no page to link to, or when
    MLflow shows it itself. Makes no request: everything was known when the run was resolved."""
    uri = session.tracking_uri
    if not is_local_store(uri) and not is_http(uri):
        return None  # databricks and plugin stores: MLflow's client or the platform shows its own links
    if is_http(uri) and session.origin == "active_run":
        return None  # the user's mlflow.start_run(): MLflow's end_run prints this very line for it
    return RunNotice(
        run_name=session.run_name,
        run_id=session.run_id,
        status=session.status,
        experiment_name=session.experiment_name,
        url=run_link(uri, session.experiment_id, session.run_id),
        experiment_url=experiment_link(uri, session.experiment_id),
        ui_command=ui_command(uri),
        undelivered=report.pending,
        sync_command=f"lightning-mlflow sync {report.journal}" if report.journal else None,
    )


def link_wanted(show_run_link: bool) -> bool:
    """The user's option, and MLflow's own switch for the links it prints (it wins: a CI log may set it)."""
    return show_run_link and not links_suppressed()


def in_jupyter_kernel() -> bool:
    """Inside a Jupyter kernel (which renders HTML), not a terminal IPython or a plain interpreter."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has imported it already
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class RunLinks:
    """Shows each (run, status) once per logger."""

    def __init__(self, show_run_link: bool) -> None:
        self.show_run_link = show_run_link
        self._shown: set[tuple[str, str]] = set()

    def stage_ended(self, session: RunSession, report: DeliveryReport) -> None:
        """The stage's run is settled: show its link, unless this status of this run was shown already. Never
        raises: a link that cannot be shown must not fail the fit."""
        try:
            if not link_wanted(self.show_run_link):  # MLflow raises for a value of its variable it cannot read
                return
            notice = run_notice(session, report)
            if notice is None or (notice.run_id, notice.status) in self._shown:
                return
            self._shown.add((notice.run_id, notice.status))
            show(notice)
        except Exception as exc:  # a closed stderr, a broken display hook, MLflow's variable set to "yes"
            log.warning("Could not show the link to MLflow run %s: %s", session.known_run_id, exc)


def show(notice: RunNotice) -> None:
    """An HTML block in a Jupyter kernel, else MLflow's line on stderr: a terminal shows it, and a script's
    stdout stays its own (``RUN_ID=$(python step.py)`` in a pipeline captures only what the step prints)."""
    if in_jupyter_kernel():
        from IPython.display import display

        try:
            display(notice)  # type: ignore[no-untyped-call]
            return
        except Exception:  # a worker forked from the kernel (ddp_notebook) may not reach its display
            pass
    stream = sys.stderr
    if stream is None:  # pythonw
        return
    line = notice.line() + "\n"
    try:
        stream.write(line)
    except UnicodeEncodeError:  # a console that cannot show the emoji
        encoding = stream.encoding or "ascii"
        stream.write(line.encode(encoding, "replace").decode(encoding))
    stream.flush()
