"""The example notebook, run top to bottom in a real Jupyter kernel, leaves exactly the runs it describes, and
every fit shows its run's link as one HTML block, with no helper in the notebook.

The kernel inherits this process's environment, so ``MLFLOW_TRACKING_URI`` points the notebook at a fresh
embedded SQLite store in ``tmp_path``; its working directory is ``tmp_path`` too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
import nbformat
from mlflow import MlflowClient
from nbclient import NotebookClient

from lightning_mlflow_ext.run.tags import FAILURE_KIND_TAG, FAILURE_STEP_TAG
from lightning_mlflow_ext.ui import run_link, ui_command

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"
EXPERIMENT = "notebook-example"
#: What the notebook's ``show_status`` prints: the status read from the store while the kernel still runs.
RUN_LINE = re.compile(r"^MLflow run ([0-9a-f]{32}): ([A-Z]+)$", re.MULTILINE)
#: A line of the notebook's last cell: run name, run id, status.
SUMMARY_LINE = re.compile(r"^(\S+)\s+([0-9a-f]{32}) ([A-Z]+)\s", re.MULTILINE)
#: The cells that show a run, in order, and the status each run has right after its fit.
EXPECTED_STATUS = {
    "fit-1": "FINISHED",
    "fit-2": "FINISHED",
    "refit": "FINISHED",  # the same logger as fit-2, a new fit: a new run
    "failed-run": "FAILED",  # the run of the cell that raised
    "retry": "FINISHED",  # the same logger as the failed fit: a new run
}


def stdout_of(cell: Any) -> str:
    return "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


#: The cell of each fit, and the cell that shows that fit's run.
FIT_CELLS = {"fit-1": "fit-1", "fit-2": "fit-2", "refit": "refit", "failing-fit": "failed-run", "retry": "retry"}


def displayed(cell: Any) -> list[dict[str, str]]:
    """The rich outputs (display_data) of a cell: mime type -> content."""
    return [dict(out.data) for out in cell.outputs if out.output_type == "display_data"]


def shown_run(cell: Any) -> tuple[str, str]:
    """(run id, status) that ``show_status`` printed in this cell."""
    found = RUN_LINE.findall(stdout_of(cell))
    assert len(found) == 1, f"cell {cell.id!r} should show one run, its stdout is: {stdout_of(cell)!r}"
    return found[0]


def test_example_notebook_runs_in_a_kernel_and_leaves_every_run_ended(tmp_path, monkeypatch):
    tracking_uri = f"sqlite:///{tmp_path}/notebook.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), "commit it without outputs"
    tagged = [cell.id for cell in code_cells if "raises-exception" in cell.metadata.get("tags", [])]
    assert tagged == ["failing-fit"]

    # Raises CellExecutionError for an error in any cell but the tagged one; shuts the kernel down at the end.
    NotebookClient(
        nb, kernel_name="python3", timeout=240, startup_timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    cells = {cell.id: cell for cell in nb.cells}
    assert all(cell.execution_count is not None for cell in code_cells), "every cell ran, past the failing one"

    (error,) = [out for out in cells["failing-fit"].outputs if out.output_type == "error"]
    assert error.ename == "RuntimeError"
    assert "simulated failure" in error.evalue

    # The statuses the notebook saw while the kernel ran: the failed run ended FAILED before any exit handler could.
    shown = {cell_id: shown_run(cells[cell_id]) for cell_id in EXPECTED_STATUS}
    assert {cell_id: status for cell_id, (_, status) in shown.items()} == EXPECTED_STATUS
    run_ids = [run_id for run_id, _ in shown.values()]
    assert len(set(run_ids)) == len(run_ids), "each fit has its own run, the same logger's included"
    assert "Same logger, new run: True" in stdout_of(cells["refit"])
    assert "Same logger, new run: True" in stdout_of(cells["retry"])
    live = {run_id: status for _, run_id, status in SUMMARY_LINE.findall(stdout_of(cells["summary"]))}
    assert live == dict(shown.values())

    # The store after the kernel is gone: exactly those five runs, in the notebook's experiment, none RUNNING.
    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments(view_type=mlflow.entities.ViewType.ALL)
    runs = client.search_runs(
        [e.experiment_id for e in experiments],
        run_view_type=mlflow.entities.ViewType.ALL,
        order_by=["attributes.start_time ASC"],
    )
    assert [run.info.run_id for run in runs] == run_ids
    assert [run.info.run_name for run in runs] == ["fit-1", "fit-2", "fit-2", "flaky", "flaky"]
    assert {run.info.run_id: run.info.status for run in runs} == live
    assert not [run for run in runs if run.info.status == "RUNNING"]
    assert {run.info.lifecycle_stage for run in runs} == {"active"}
    (experiment,) = [e for e in experiments if e.name == EXPERIMENT]
    assert {run.info.experiment_id for run in runs} == {experiment.experiment_id}

    first = runs[0]
    assert first.data.params == {"lr": "0.05", "hidden": "16", "n": "256", "batch_size": "32"}
    assert {"train_loss", "val_loss", "epoch"} <= set(first.data.metrics)
    assert [point.step for point in client.get_metric_history(first.info.run_id, "val_loss")] == [0, 1, 2]
    assert len(client.get_metric_history(first.info.run_id, "train_loss")) == 9  # 18 steps, every 2nd logged
    # The failed fit's run holds its params, and what it logged before it raised (step 1; it raised at step 3).
    assert runs[3].data.params == first.data.params
    assert [point.step for point in client.get_metric_history(runs[3].info.run_id, "train_loss")] == [1]
    # ... and why it failed, as the kernel ran it: the traceback, and the output of the cell's fit.
    assert runs[3].data.tags[FAILURE_KIND_TAG] == "exception"
    assert runs[3].data.tags[FAILURE_STEP_TAG] == "3"
    failure = Path(client.download_artifacts(runs[3].info.run_id, "failure", str(tmp_path / "failure")))
    assert "simulated failure in training step 3" in (failure / "traceback.txt").read_text()
    assert (failure / "output_tail.txt").exists()
    assert not [run for run in runs if run is not runs[3] and FAILURE_KIND_TAG in run.data.tags]

    # Each fit showed one block, with no helper: the run's name, its status, its link, and the command that
    # serves the link for this local store (text/plain: the terminal line). Nothing of it went to stdout.
    command = ui_command(tracking_uri)
    assert command is not None and tracking_uri in command
    for fit_cell, shown_cell in FIT_CELLS.items():
        run = client.get_run(shown[shown_cell][0])
        link = run_link(tracking_uri, experiment.experiment_id, run.info.run_id)
        (block,) = displayed(cells[fit_cell])
        assert f'<a href="{link}" target="_blank" rel="noopener"><b>{run.info.run_name}</b></a>' in block["text/html"]
        assert f">{run.info.status}</span>" in block["text/html"]
        assert f"<code>{command}</code>" in block["text/html"]
        assert block["text/plain"] == f"🏃 View run {run.info.run_name} at: {link} (start the UI first: {command})"
        assert "View run" not in stdout_of(cells[fit_cell])
    assert "FAILED" in displayed(cells["failing-fit"])[0]["text/html"]
    # Cells that fit nothing show no block.
    assert not [cell.id for cell in code_cells if cell.id not in FIT_CELLS and displayed(cell)]
