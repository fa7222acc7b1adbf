"""The link to its run a fit shows when it ends, in a terminal: MLflow's own line, ``🏃 View run NAME at: URL``,
once, on rank 0, and a link that opens the run; for a local store, with the ``mlflow ui`` command that serves it.
Off with ``show_run_link=False`` or MLflow's ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``. (In a Jupyter kernel:
tests/test_notebook.py.)

Each fit runs as a real subprocess (tests/link_fit.py), so its stdout and stderr are what a terminal shows.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_server import _die_with_parent, _free_port
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.trainer.run_notice import RunNotice
from lightning_mlflow_ext.ui import run_link, ui_command

SCRIPT = Path(__file__).with_name("link_fit.py")
#: MLflow's line (``_log_url``), and the part this package adds for a local store.
VIEW_RUN = re.compile(r"^🏃 View run (.+?) at: (\S+)(?: \(start the UI first: (.+)\))?$", re.MULTILINE)


def fit(
    tmp_path: Path, uri: str, experiment: str, *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> str:
    """Run the fit as a terminal would; what the terminal shows of it (the link goes to stderr, so the script's
    stdout stays its own: checked here for every fit)."""
    command = [sys.executable, str(SCRIPT), "--tracking-uri", uri, "--experiment", experiment, *args]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        timeout=240,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )
    assert (done.returncode == 0) is ok, done.stderr[-3000:]
    if "--in-active-run" not in args:  # MLflow's own end_run prints its line on stdout
        assert "View run" not in done.stdout
    return done.stdout + done.stderr


def only_run(client: MlflowClient, experiment: str) -> Run:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([experiment_id])
    return run


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


def assert_link_opens(url: str, run: Run) -> None:
    """The page answers, and the run its fragment names is this run, read through that same UI's API."""
    base, fragment = url.split("/#/", 1)
    assert fragment == f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    status, content_type, page = get(url)
    assert status == 200 and content_type.startswith("text/html") and b"<html" in page.lower()
    status, _, body = get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run.info.run_id}")
    shown = json.loads(body)["run"]["info"]
    assert (status, shown["run_name"], shown["status"]) == (200, run.info.run_name, run.info.status)


@pytest.fixture(scope="module")
def terminal_fit(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Run]:
    """A fit then a test, run as a terminal runs it, with the link on: its stdout and its run."""
    experiment = f"terminal-fit-{uuid.uuid4().hex[:12]}"
    stdout = fit(
        tmp_path_factory.mktemp("terminal"), mlflow_server.uri, experiment, "--run-name", "terminal-fit", "--test"
    )
    return stdout, only_run(MlflowClient(mlflow_server.uri), experiment)


def test_a_terminal_fit_then_test_prints_one_line_whose_link_opens_the_run(terminal_fit, mlflow_server):
    stdout, run = terminal_fit
    assert run.info.status == "FINISHED"
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    # One line for the run and its status: the test stage that followed the fit left both as they were.
    assert VIEW_RUN.findall(stdout) == [("terminal-fit", url, "")]
    assert stdout.count("View run") == 1
    assert_link_opens(url, run)


def test_a_ddp_fit_prints_the_line_on_rank_zero_only(mlflow_server, experiment_name, tmp_path):
    stdout = fit(tmp_path, mlflow_server.uri, experiment_name, "--devices", "2", "--strategy", "ddp")

    run = only_run(MlflowClient(mlflow_server.uri), experiment_name)
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert VIEW_RUN.findall(stdout) == [(run.info.run_name, url, "")]  # MLflow's generated name


def test_a_failed_fit_prints_the_line_of_its_failed_run(mlflow_server, experiment_name, tmp_path):
    stdout = fit(tmp_path, mlflow_server.uri, experiment_name, "--run-name", "broken", "--fail-at-step", "2", ok=False)

    run = only_run(MlflowClient(mlflow_server.uri), experiment_name)
    assert run.info.status == "FAILED"
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert VIEW_RUN.findall(stdout) == [("broken", url, "")]


@pytest.mark.parametrize("switch", ["show_run_link=False", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"])
def test_switched_off_no_line(switch, terminal_fit, mlflow_server, experiment_name, tmp_path):
    args = ["--run-name", "terminal-fit", "--test"]  # the fit of terminal_fit, which prints the line
    if switch == "show_run_link=False":
        stdout = fit(tmp_path, mlflow_server.uri, experiment_name, *args, "--no-run-link")
    else:
        stdout = fit(
            tmp_path, mlflow_server.uri, experiment_name, *args, env={"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        )

    assert only_run(MlflowClient(mlflow_server.uri), experiment_name).info.status == "FINISHED"  # it did run
    assert "View run" not in stdout
    assert mlflow_server.uri not in stdout
    assert VIEW_RUN.findall(terminal_fit[0]), "the same fit with the link on prints it"


def test_the_users_own_run_on_a_server_gets_mlflows_line_only(mlflow_server, experiment_name, tmp_path):
    """Inside ``with mlflow.start_run()`` the fit records into the user's run, and MLflow's ``end_run`` prints the
    line when their block ends: the fit adds no second one."""
    stdout = fit(tmp_path, mlflow_server.uri, experiment_name, "--run-name", "users-run", "--in-active-run")

    run = only_run(MlflowClient(mlflow_server.uri), experiment_name)
    assert "train_loss_step" in run.data.metrics  # the fit recorded into the user's run
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert VIEW_RUN.findall(stdout) == [("users-run", url, "")]
    assert "🧪 View experiment at:" in stdout  # the line is MLflow's own


def test_a_local_store_prints_the_mlflow_ui_command_that_serves_the_link(experiment_name, tmp_path):
    store = f"sqlite:///{tmp_path}/local store.db"  # a space: the command must still be one argument
    stdout = fit(tmp_path, store, experiment_name, "--run-name", "local-fit")

    run = only_run(MlflowClient(store), experiment_name)
    ((name, url, command),) = VIEW_RUN.findall(stdout)
    assert (name, url) == (
        "local-fit",
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
    )
    argv = shlex.split(command)
    assert argv == ["mlflow", "ui", "--backend-store-uri", store, "--port", "5000"]

    # The command, run as printed (on a free port instead of 5000), serves the run the link names.
    port = _free_port()
    argv[-1] = str(port)
    ui = subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        assert_link_opens(url.replace(":5000/", f":{port}/"), run)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the UI and the web server it started, in the session it leads
        ui.wait(timeout=30)


def test_the_html_block_escapes_what_it_shows():
    notice = RunNotice(
        run_name="<img src=x onerror=alert(1)>",
        run_id="0" * 32,
        status="FINISHED",
        experiment_name="a & b",
        url="http://host/#/experiments/1/runs/" + "0" * 32,
        experiment_url="http://host/#/experiments/1",
    )
    shown = notice._repr_html_()
    assert "<img" not in shown
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown
    assert ">a &amp; b</a>" in shown
    assert repr(notice) == f"🏃 View run <img src=x onerror=alert(1)> at: {notice.url}"


def test_the_users_own_run_on_a_local_store_is_linked_by_the_fit(tmp_path, experiment_name, monkeypatch, capsys):
    """MLflow prints no line for a local store, not even at ``end_run``: the fit shows the link of the user's run."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_experiment(experiment_name)
    with mlflow.start_run(run_name="mine") as mine:
        make_trainer(MLflowLogger(), max_epochs=1).fit(TinyModel(), datamodule=TinyData())
    run = MlflowClient(store).get_run(mine.info.run_id)

    assert "train_loss_step" in run.data.metrics
    url = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert VIEW_RUN.findall(capsys.readouterr().err) == [
        ("mine", url, f"mlflow ui --backend-store-uri {store} --port 5000")
    ]


def test_links_and_commands_carry_no_credentials():
    assert run_link("https://alice:s3cret@mlflow.example.com/", "7", "ab" * 16) == (
        f"https://mlflow.example.com/#/experiments/7/runs/{'ab' * 16}"
    )
    assert ui_command("postgresql://alice:s3cret@db.example.com/mlflow") == (
        "mlflow ui --backend-store-uri postgresql://db.example.com/mlflow --port 5000"
    )
    assert ui_command("https://mlflow.example.com") is None
    assert ui_command("databricks") is None  # the platform shows its own links
