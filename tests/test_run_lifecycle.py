"""Which run the logger writes into, and the status that run ends with, through a real Trainer."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap

import mlflow
import pytest
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import DeletedExperimentError, MLflowLogger, RunNotFoundError
from lightning_mlflow_ext.run.tags import FAILURE_KIND_TAG, OWNER_TAG


def runs_in(client: MlflowClient, experiment_name: str) -> list[mlflow.entities.Run]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name!r} was not created"
    return client.search_runs([experiment.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [point.step for point in client.get_metric_history(run_id, key)]


def test_fit_then_test_writes_one_finished_run(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, run_name="tiny", tracking_uri=tracking_uri)
    trainer = make_trainer(logger)
    model, data = TinyModel(lr=0.05), TinyData()
    trainer.fit(model, data)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    trainer.test(model, data)

    (run,) = runs_in(client, experiment_name)
    assert run.info.run_id == logger.run_id == logger.version
    assert run.info.run_name == "tiny"
    assert run.info.status == "FINISHED"
    assert run.data.tags[OWNER_TAG] == "lightning-mlflow-ext"
    assert "test_loss" in run.data.metrics and "val_loss" in run.data.metrics
    assert run.data.params["lr"] == "0.05"
    assert run.data.params["batch_size"] == "8"  # the datamodule's save_hyperparameters()
    assert logger.name == experiment_name
    assert logger.experiment_id == run.info.experiment_id


def test_runs_inside_user_active_run_and_leaves_it_open(tracking_uri, experiment_name, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # the user's fluent API setting
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment_name)
    with mlflow.start_run(run_name="outer", experiment_id=experiment_id) as outer:
        logger = MLflowLogger(experiment_name="ignored-when-a-run-is-active")
        trainer = make_trainer(logger)
        trainer.fit(TinyModel(lr=0.2), TinyData())
        assert logger.run_id == outer.info.run_id
        assert not logger.owns_run
        assert client.get_run(outer.info.run_id).info.status == "RUNNING"
    run = client.get_run(outer.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.2"
    assert "val_loss" in run.data.metrics
    assert len(runs_in(client, experiment_name)) == 1
    assert client.get_experiment_by_name("ignored-when-a-run-is-active") is None


def test_exception_in_fit_marks_the_run_failed(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(logger).fit(TinyModel(fail_at_step=3), TinyData())
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert steps_of(client, logger.run_id, "train_loss_step") == [0, 1, 2]


def test_keyboard_interrupt_marks_the_run_killed(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    # Lightning turns Ctrl-C into a graceful shutdown that ends with sys.exit(1).
    with pytest.raises(SystemExit):
        make_trainer(logger).fit(TinyModel(interrupt_at_step=2), TinyData())
    assert client.get_run(logger.run_id).info.status == "KILLED"


def test_unknown_run_id_is_an_error_not_a_new_run(tracking_uri, client, experiment_name):
    client.create_experiment(experiment_name)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id="0" * 32)
    with pytest.raises(RunNotFoundError, match=r"No MLflow run with id '0{32}'"):
        make_trainer(logger).fit(TinyModel(), TinyData())
    assert runs_in(client, experiment_name) == []


def test_deleted_experiment_is_an_error_that_says_how_to_restore(tracking_uri, client, experiment_name):
    experiment_id = client.create_experiment(experiment_name)
    client.delete_experiment(experiment_id)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    with pytest.raises(DeletedExperimentError, match=f"mlflow experiments restore --experiment-id {experiment_id}"):
        make_trainer(logger).fit(TinyModel(), TinyData())


def test_run_id_continues_a_finished_run_and_finishes_it_again(tracking_uri, client, experiment_name):
    first = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    model, data = TinyModel(), TinyData()
    make_trainer(first).fit(model, data)

    again = MLflowLogger(tracking_uri=tracking_uri, run_id=first.run_id, tags={"phase": "eval"})
    make_trainer(again).test(model, data)  # logs the same hyperparameters again: a no-op

    (run,) = runs_in(client, experiment_name)
    assert run.info.status == "FINISHED"
    assert "test_loss" in run.data.metrics and "val_loss" in run.data.metrics
    assert run.data.tags["phase"] == "eval"
    assert again.name == experiment_name


def test_running_run_from_env_is_left_running(tracking_uri, client, experiment_name, monkeypatch):
    experiment_id = client.create_experiment(experiment_name)
    pipeline_run = client.create_run(experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", pipeline_run.info.run_id)
    logger = MLflowLogger(tracking_uri=tracking_uri, run_name="train-step", tags={"step": "train"})
    make_trainer(logger).fit(TinyModel(), TinyData())
    run = client.get_run(pipeline_run.info.run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "train-step"
    assert run.data.tags["step"] == "train"
    assert "val_loss" in run.data.metrics


def test_parent_run_id_nests_the_new_run(tracking_uri, client, experiment_name):
    experiment_id = client.create_experiment(experiment_name)
    parent = client.create_run(experiment_id)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, parent_run_id=parent.info.run_id)
    make_trainer(logger, max_epochs=1).fit(TinyModel(), TinyData())
    assert client.get_run(logger.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_tracking_uri_is_fixed_at_construction_and_global_state_untouched(tmp_path, monkeypatch):
    chosen = f"sqlite:///{tmp_path}/chosen.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    logger = MLflowLogger(experiment_name="fixed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/later.db")
    before = mlflow.get_tracking_uri()
    make_trainer(logger, max_epochs=1).fit(TinyModel(), TinyData())
    assert mlflow.get_tracking_uri() == before
    assert logger.tracking_uri == chosen
    assert MlflowClient(chosen).get_run(logger.run_id).info.status == "FINISHED"
    assert not (tmp_path / "later.db").exists()


def test_default_store_is_mlflow_db_in_the_working_directory(tmp_path):
    logger = MLflowLogger()
    make_trainer(logger, max_epochs=1).fit(TinyModel(), TinyData())
    assert (tmp_path / "mlflow.db").exists()
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert logger.name == "lightning_logs"


def test_experiment_name_from_environment(tracking_uri, client, experiment_name, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment_name)
    logger = MLflowLogger(tracking_uri=tracking_uri)
    make_trainer(logger, max_epochs=1).fit(TinyModel(), TinyData())
    assert len(runs_in(client, experiment_name)) == 1


def test_save_dir_and_log_dir_are_real_folders_for_every_store(tracking_uri, tmp_path):
    logger = MLflowLogger(tracking_uri=tracking_uri, experiment_name="dirs")
    # ./lightning_logs, not the working directory: Lightning's SaveConfigCallback writes config.yaml into save_dir
    assert logger.save_dir == str(tmp_path / "lightning_logs")
    assert os.path.isdir(logger.log_dir)
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "dirs", logger.run_id)
    file_logger = MLflowLogger(tracking_uri=f"file://{tmp_path}/store")
    assert file_logger.save_dir == f"{tmp_path}/store"
    explicit = MLflowLogger(tracking_uri=tracking_uri, save_dir="relative/logs")
    assert explicit.save_dir == str(tmp_path / "relative" / "logs")


def test_checkpoints_land_under_the_run_folder(tracking_uri, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1, enable_checkpointing=True)
    trainer.fit(TinyModel(), TinyData())
    folder = os.path.join(logger.log_dir, "checkpoints")
    assert os.listdir(folder), f"no checkpoint in {folder}"


def test_trainer_with_logger_survives_pickling(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1)
    unpickled = pickle.loads(pickle.dumps(trainer))
    assert isinstance(unpickled.logger, MLflowLogger)
    trainer.fit(TinyModel(), TinyData())
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.run_id == logger.run_id
    copy.log_metrics({"after_pickle": 1.0}, step=7)
    copy.flush()
    assert steps_of(client, logger.run_id, "after_pickle") == [7]


def _run_script(code: str, tracking_uri: str, cwd: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, tracking_uri],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        # The tests folder first, and whatever PYTHONPATH names (the package under test when it is not installed).
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                        os.environ.get("PYTHONPATH")]))},
    )


def printed_run_id(output: str) -> str:
    return re.findall(r"^[0-9a-f]{32}$", output, flags=re.MULTILINE)[0]


def test_no_created_run_is_left_running_when_the_process_exits(tracking_uri, client, experiment_name, tmp_path):
    done = _run_script(
        f"""
        import sys
        from lightning_mlflow_ext import MLflowLogger
        logger = MLflowLogger(experiment_name={experiment_name!r}, tracking_uri=sys.argv[1])
        logger.log_hyperparams({{"lr": 0.1}})
        logger.log_metrics({{"loss": 1.0}}, step=0)
        print(logger.run_id)
        """,
        tracking_uri,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    run = client.get_run(printed_run_id(done.stdout))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["loss"] == 1.0
    assert run.data.params["lr"] == "0.1"


def test_uncaught_exception_in_a_script_leaves_the_run_failed(tracking_uri, client, experiment_name, tmp_path):
    done = _run_script(
        f"""
        import sys
        from tiny import TinyData, TinyModel, make_trainer
        from lightning_mlflow_ext import MLflowLogger
        logger = MLflowLogger(experiment_name={experiment_name!r}, tracking_uri=sys.argv[1])
        print(logger.run_id, flush=True)
        make_trainer(logger).fit(TinyModel(fail_at_step=2), TinyData())
        """,
        tracking_uri,
        str(tmp_path),
    )
    assert done.returncode != 0
    assert "boom" in done.stderr
    run_id = printed_run_id(done.stdout)
    assert done.stdout == f"{run_id}\n"  # RUN_ID=$(python step.py) gets the run id and nothing else
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_KIND_TAG] == "exception"


def test_sigterm_marks_the_run_killed(tracking_uri, client, experiment_name, tmp_path):
    done = _run_script(
        f"""
        import os, signal, sys
        from tiny import TinyData, TinyModel, make_trainer
        from lightning_mlflow_ext import MLflowLogger

        class Preempted(TinyModel):
            def on_train_batch_end(self, outputs, batch, batch_idx):
                if self.global_step == 3:
                    os.kill(os.getpid(), signal.SIGTERM)

        logger = MLflowLogger(experiment_name={experiment_name!r}, tracking_uri=sys.argv[1])
        print(logger.run_id, flush=True)
        make_trainer(logger).fit(Preempted(), TinyData())
        """,
        tracking_uri,
        str(tmp_path),
    )
    assert "Received SIGTERM" in done.stderr  # Lightning ends the process with SystemExit
    run = client.get_run(printed_run_id(done.stdout))
    assert run.info.status == "KILLED"
    assert run.data.tags[FAILURE_KIND_TAG] == "terminated"  # a scheduler's preemption or time limit
    assert len(client.get_metric_history(run.info.run_id, "train_loss_step")) >= 3


def test_a_second_fresh_fit_with_the_same_logger_starts_a_new_run(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    make_trainer(logger).fit(TinyModel(), TinyData())
    first = logger.run_id
    make_trainer(logger).fit(TinyModel(), TinyData())  # a notebook cell run again
    assert logger.run_id != first
    for run in runs_in(client, experiment_name):
        assert run.info.status == "FINISHED"
        assert steps_of(client, run.info.run_id, "train_loss_step") == list(range(16))
    assert len(runs_in(client, experiment_name)) == 2


def test_a_failed_fit_stays_failed_through_a_later_test(tracking_uri, client, experiment_name):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger)
    model, data = TinyModel(fail_at_step=3), TinyData()
    with pytest.raises(RuntimeError):
        trainer.fit(model, data)
    trainer.test(model, data)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert "test_loss" in run.data.metrics


def test_someone_elses_ended_run_gets_its_status_back(tracking_uri, client, experiment_name):
    experiment_id = client.create_experiment(experiment_name)
    theirs = client.create_run(experiment_id).info.run_id
    client.set_terminated(theirs, status="KILLED")
    logger = MLflowLogger(tracking_uri=tracking_uri, run_id=theirs)
    make_trainer(logger).test(TinyModel(), TinyData())
    run = client.get_run(theirs)
    assert run.info.status == "KILLED"
    assert "test_loss" in run.data.metrics


def test_a_logger_dropped_without_finalize_still_delivers_and_ends_its_run(
    tracking_uri, client, experiment_name, tmp_path
):
    done = _run_script(
        f"""
        import gc, sys
        from lightning_mlflow_ext import MLflowLogger

        def log_some() -> str:
            logger = MLflowLogger(experiment_name={experiment_name!r}, tracking_uri=sys.argv[1])
            for step in range(500):
                logger.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
            return logger.run_id

        print(log_some())
        gc.collect()
        """,
        tracking_uri,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    run_id = printed_run_id(done.stdout)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps_of(client, run_id, "loss") == list(range(500))


def test_an_uncaught_exception_outside_a_trainer_leaves_the_run_failed(tracking_uri, client, experiment_name, tmp_path):
    done = _run_script(
        f"""
        import sys
        from lightning_mlflow_ext import MLflowLogger
        logger = MLflowLogger(experiment_name={experiment_name!r}, tracking_uri=sys.argv[1])
        logger.log_metrics({{"loss": 1.0}}, step=0)
        print(logger.run_id, flush=True)
        raise RuntimeError("data loader broke")
        """,
        tracking_uri,
        str(tmp_path),
    )
    assert "data loader broke" in done.stderr
    assert client.get_run(printed_run_id(done.stdout)).info.status == "FAILED"


def test_importing_the_package_leaves_the_root_logger_alone(tmp_path):
    # mlflow.pytorch's Lightning autolog module calls logging.basicConfig(level=ERROR) at import, which would
    # hide every warning of the process, this package's "points not delivered" included.
    code = (
        "import logging; from lightning_mlflow_ext import MLflowLogger, MLflowCallback, load_model\n"
        "import lightning_mlflow_ext.trainer.logger, lightning_mlflow_ext.trainer.bridge\n"
        "from lightning_mlflow_ext.run.models import mlflow_pytorch; mlflow_pytorch()\n"
        "root = logging.getLogger(); print(root.level, len(root.handlers))\n"
        "logging.basicConfig(level=logging.ERROR)  # what mlflow.pytorch.autolog's import does when it runs first\n"
        "logging.getLogger('lightning_mlflow_ext.run.session').warning('still heard')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(logging.WARNING), "0"]
    assert "still heard" in done.stderr


def test_fitting_a_fixed_model_on_the_same_trainer_after_a_failure_starts_a_new_run(tracking_uri, client,
                                                                                     experiment_name):
    # The notebook habit: the fit cell failed, the model cell is fixed and run again, then the fit cell.
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModel(fail_at_step=2), TinyData())
    failed = logger.run_id
    trainer.fit(TinyModel(lr=0.3), TinyData())
    assert logger.run_id != failed
    assert client.get_run(failed).info.status == "FAILED"  # the failure stays on record
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert client.get_run(logger.run_id).data.params["lr"] == "0.3"


def test_a_trainer_without_the_bridge_is_reported_and_a_logger_without_trainer_is_not(
    tracking_uri, client, experiment_name, caplog
):
    from lightning_mlflow_ext.trainer.bridge import MLflowTrainerBridge

    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri)
    trainer = make_trainer(logger, max_epochs=1)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, MLflowTrainerBridge)]
    trainer.fit(TinyModel(), TinyData())
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert any("never saw the Trainer" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with MLflowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri) as standalone:
        standalone.log_metrics({"score": 1.0}, step=0)
    assert client.get_run(standalone.run_id).info.status == "FINISHED"
    assert not any("never saw the Trainer" in r.getMessage() for r in caplog.records)
