"""A run that ends FAILED or KILLED says why, where and after what output; ``lightning-mlflow runs close-stale``
ends the runs whose process died without ending them, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fresh_sqlite_store
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.commands import main
from lightning_mlflow_ext.run.forensics import Failure, failure_kind, failure_tags
from lightning_mlflow_ext.run.heartbeat import heartbeat
from lightning_mlflow_ext.run.output_tail import OutputTail
from lightning_mlflow_ext.run.tags import (
    FAILURE_EPOCH_TAG,
    FAILURE_EXCEPTION_TAG,
    FAILURE_KIND_TAG,
    FAILURE_LAST_HEARTBEAT_TAG,
    FAILURE_MESSAGE_TAG,
    FAILURE_STEP_TAG,
    FAILURE_TAG_PREFIX,
    HEARTBEAT_TAG,
    MAX_TAG_VALUE,
    RELEASED,
)
from lightning_mlflow_ext.values.redaction import Redactor
from lightning_mlflow_ext.values.secret_text import TextRedactor, secret_values


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> str:
    """One embedded SQLite store for the module (each test has its own experiment): a server stores failure
    records as it stores any tag and artifact."""
    return fresh_sqlite_store(tmp_path_factory.mktemp("store"), sqlite_template)


@pytest.fixture(scope="module")
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)

TRACKING_PASSWORD = "s3cr3t-from-the-environment"


class Chatty(TinyModel):
    """Prints a line every step, one of them with secrets in it, and raises what it is given at ``raise_at``."""

    def __init__(self, raise_at: int, error: BaseException | None = None) -> None:
        super().__init__()
        self.raise_at, self.error = raise_at, error

    def training_step(self, batch, batch_idx):
        print(f"chatty step {self.global_step}")
        print(f"db login password=hunter2 token {os.environ.get('MLFLOW_TRACKING_PASSWORD')}", file=sys.stderr)
        if self.error is not None and self.global_step == self.raise_at:
            raise self.error  # the raising line
        return super().training_step(batch, batch_idx)


def tags_of(client: MlflowClient, run_id: str) -> dict[str, str]:
    return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(FAILURE_TAG_PREFIX)}


def artifact_text(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path / "downloads"))).read_text()


def test_a_failed_fit_records_its_exception_traceback_step_and_last_output(
    tracking_uri, client, experiment_name, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TRACKING_PASSWORD)
    streams = sys.stdout, sys.stderr
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    error = RuntimeError("cannot reach postgres://me:hunter2@db/x with password=hunter2")
    with pytest.raises(RuntimeError, match="cannot reach"):
        make_trainer(logger).fit(Chatty(raise_at=3, error=error), TinyData(n_train=16))  # 2 steps an epoch

    assert (sys.stdout, sys.stderr) == streams  # put back as they were
    assert "chatty step 3" in capsys.readouterr().out  # pytest's capture still got every line
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert tags_of(client, logger.run_id) == {
        FAILURE_KIND_TAG: "exception",
        FAILURE_EXCEPTION_TAG: "RuntimeError",
        FAILURE_MESSAGE_TAG: "cannot reach postgres://db/x with password=[redacted]",
        FAILURE_STEP_TAG: "3",
        FAILURE_EPOCH_TAG: "1",
    }
    trace = artifact_text(client, logger.run_id, "failure/traceback.txt", tmp_path)
    assert trace.startswith("Traceback (most recent call last):")
    assert "raise self.error  # the raising line" in trace and "test_forensics.py" in trace
    assert "hunter2" not in trace
    tail = artifact_text(client, logger.run_id, "failure/output_tail.txt", tmp_path)
    assert [line for line in tail.splitlines() if line.startswith("chatty")] == [f"chatty step {n}" for n in range(4)]
    assert "db login password=[redacted] token [redacted]" in tail  # stderr too, in the order written
    assert "hunter2" not in tail and TRACKING_PASSWORD not in tail


def test_a_cuda_out_of_memory_error_is_named_as_such(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        make_trainer(logger).fit(Chatty(raise_at=1, error=oom), TinyData(n_train=16))
    tags = tags_of(client, logger.run_id)
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert tags[FAILURE_KIND_TAG] == "cuda_oom"
    assert tags[FAILURE_EXCEPTION_TAG].endswith("OutOfMemoryError")
    assert tags[FAILURE_MESSAGE_TAG].startswith("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_is_recognised_by_its_message_and_as_a_cause():
    assert failure_kind(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")) == "cuda_oom"
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        except RuntimeError as oom:
            raise ValueError("batch 7 failed") from oom
    except ValueError as wrapped:
        assert failure_kind(wrapped) == "cuda_oom"
    assert failure_kind(RuntimeError("out of memory in my own cache")) == "exception"
    assert failure_kind(KeyboardInterrupt()) == "interrupted"


def test_ctrl_c_ends_the_run_killed_and_says_interrupted(tracking_uri, client, experiment_name, tmp_path):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        make_trainer(logger).fit(Chatty(raise_at=2, error=KeyboardInterrupt()), TinyData(n_train=16))
    assert client.get_run(logger.run_id).info.status == "KILLED"
    assert tags_of(client, logger.run_id) == {
        FAILURE_KIND_TAG: "interrupted",
        FAILURE_EXCEPTION_TAG: "KeyboardInterrupt",
        FAILURE_STEP_TAG: "2",
        FAILURE_EPOCH_TAG: "1",
    }
    assert "KeyboardInterrupt" in artifact_text(client, logger.run_id, "failure/traceback.txt", tmp_path)


def test_a_successful_fit_records_no_failure(tracking_uri, client, experiment_name):
    streams = sys.stdout, sys.stderr
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    make_trainer(logger, max_epochs=1).fit(Chatty(raise_at=-1), TinyData(n_train=16))
    assert (sys.stdout, sys.stderr) == streams
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert tags_of(client, logger.run_id) == {}
    assert client.list_artifacts(logger.run_id, "failure") == []


def test_secrets_are_hidden_in_text_by_assignment_url_header_and_environment():
    environ = {"MLFLOW_TRACKING_TOKEN": "tok-123456", "WANDB_KEY": "wb-987654", "PWD": "/home/me/project"}
    hide = TextRedactor(Redactor.of("wandb_key"), secret_values(environ, Redactor.of("wandb_key")))
    assert hide("password=hunter2 max_tokens=5 tokenizer: bert") == "password=[redacted] max_tokens=5 tokenizer: bert"
    assert hide("""{"api_key": "a b", 'db_pwd': 'x'}""") == """{"api_key": "[redacted]", 'db_pwd': '[redacted]'}"""
    assert hide("-H 'Authorization: Bearer eyJhbGciOi.x.y'") == "-H 'Authorization: [redacted]'"
    assert hide("GET https://me:pw@host/x, tok-123456 wb-987654") == "GET https://host/x, [redacted] [redacted]"
    assert hide('File "/home/me/project/train.py", line 3') == 'File "/home/me/project/train.py", line 3'  # PWD


def test_a_long_message_is_cut_to_the_tag_limit_and_points_at_the_traceback():
    failure = Failure(ValueError("x" * 20_000), "exception")
    message = failure_tags(failure, TextRedactor())[FAILURE_MESSAGE_TAG]
    assert len(message) == MAX_TAG_VALUE and message.endswith("chars, whole in failure/traceback.txt]")


def test_output_capture_is_shared_and_never_takes_away_a_stream_put_on_top(capsys):
    ours, streams = OutputTail(), (sys.stdout, sys.stderr)
    other = OutputTail()
    ours.start()
    other.start()
    print("kept for both")
    other.stop()  # the capture stays: ours still holds it
    print("kept for ours", file=sys.stderr)
    assert ours.tail() == "kept for both\nkept for ours\n"
    on_top = sys.stdout = _Collect(sys.stdout)  # e.g. a user's redirect_stdout, or another tool's tee
    ours.stop()
    assert sys.stdout is on_top and sys.stderr is streams[1]  # left in place; the stream below forwards, unrecorded
    print("still delivered")
    sys.stdout = streams[0]
    assert on_top.text == "still delivered\n" and "still delivered" in capsys.readouterr().out
    assert ours.tail() is None


class _Collect:
    """A stream put on top of ``below``: keeps what it is given, and hands it on."""

    def __init__(self, below) -> None:
        self.below, self.text = below, ""

    def write(self, text: str) -> int:
        self.text += text
        return self.below.write(text)

    def flush(self) -> None:
        self.below.flush()


def running_run(client: MlflowClient, experiment_id: str, name: str, beat: str | None) -> str:
    tags = {} if beat is None else {HEARTBEAT_TAG: beat}
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def test_close_stale_ends_the_runs_whose_process_died_and_leaves_every_other_alone(
    tracking_uri, client, experiment_name, tmp_path, capsys
):
    script = Path(__file__).with_name("train_script.py")
    killed = subprocess.run(
        [sys.executable, str(script), "--tracking-uri", tracking_uri, "--experiment", experiment_name,
         "--report", str(tmp_path / "report"), "--max-epochs", "1", "--kill-at-step", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (dead,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert dead.info.status == "RUNNING"  # nobody could end it
    experiment_id = dead.info.experiment_id
    now = time.time()
    long_gone = running_run(client, experiment_id, "other-host-long-gone", f"{now - 3600:.0f} gpu-node-7 4242")
    live = {
        running_run(client, experiment_id, "alive-here", heartbeat()),  # this very process
        running_run(client, experiment_id, "alive-elsewhere", f"{now:.0f} gpu-node-7 4242"),
        running_run(client, experiment_id, "pipeline-step", RELEASED),
        running_run(client, experiment_id, "not-ours", None),
    }
    args = ["runs", "close-stale", "--experiment", experiment_name, "--tracking-uri", tracking_uri]

    assert main([*args, "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"would close {dead.info.run_id}" in said and f"would close {long_gone}" in said
    assert all(run.info.status == "RUNNING" for run in client.search_runs([experiment_id]))

    assert main(args) == 0
    said = capsys.readouterr().out
    assert f"closed {dead.info.run_id}" in said
    assert "2 stale runs closed; left alone: 2 live, 1 left open for a pipeline's next step, " in said
    assert "1 without a lightning-mlflow-ext heartbeat (not ours)" in said
    for run_id in (dead.info.run_id, long_gone):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags[FAILURE_KIND_TAG] == "heartbeat_stopped"
        assert run.data.tags[FAILURE_LAST_HEARTBEAT_TAG].endswith(f"pid {run.data.tags[HEARTBEAT_TAG].split()[-1]})")
        last_beat_ms = int(run.data.tags[HEARTBEAT_TAG].split()[0]) * 1000
        assert run.info.end_time == max(last_beat_ms, run.info.start_time)  # it ran until then, not until now
    assert {run.info.run_id for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'")} == live
