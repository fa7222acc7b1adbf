"""The servers teams run: TLS with a private CA, basic auth, credentials that stop working mid-fit, and a proxy that
delays, fails, resets and stalls requests. Nothing is lost, nothing is stored twice, no secret is recorded.

Every case drives a real Lightning fit into a real ``mlflow server`` and checks, through ``MlflowClient``, the exact
points, the final status, and that no password or token appears anywhere a user could read it.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from fault_servers import Credentials, change_password, create_user
from mlflow import MlflowClient
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger
from lightning_mlflow_ext.delivery.faults import Fault
from lightning_mlflow_ext.delivery.journal import Header, Journal, find_journals, journal_path
from lightning_mlflow_ext.delivery.transport import ClientTransport
from lightning_mlflow_ext.delivery.writer import RunWriter
from lightning_mlflow_ext.errors import CredentialsRefusedError, UntrustedCertificateError

STEPS = 16  # 2 epochs x 8 batches: train_loss_step and train_mse at every step, val_loss and train_loss_epoch twice


def assert_every_point_once(client: MlflowClient, run_id: str, steps: int = STEPS, epochs: int = 2) -> None:
    expected = {"train_loss_step": steps, "train_mse": steps, "val_loss": epochs, "train_loss_epoch": epochs}
    for key, count in expected.items():
        history = [point.step for point in client.get_metric_history(run_id, key)]
        duplicated = sorted(step for step, n in Counter(history).items() if n > 1)
        assert not duplicated, f"{key}: steps stored twice: {duplicated}"
        assert len(history) == count, f"{key}: {len(history)} points, expected {count}"


def text_of_run(tracking_uri: str, run_id: str, folder: Path) -> str:
    """Everything a user can read of a run: tags, params, and the bytes of every artifact."""
    run = MlflowClient(tracking_uri).get_run(run_id)
    parts = [repr(run.data.tags), repr(run.data.params)]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder), tracking_uri=tracking_uri))
    for path in local.rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, "a secret was recorded or printed"


def sync(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "lightning_mlflow_ext.commands", "sync", str(path), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


class Steps(TinyModel):
    """Calls ``self.at_step[global_step]()`` after that training step: a fault injected mid-fit."""

    at_step: dict

    def on_train_batch_end(self, outputs, batch, batch_idx):
        action = self.at_step.get(self.global_step)
        if action is not None:
            action()


def model_with(actions: dict) -> Steps:
    model = Steps()
    model.at_step = actions  # after construction: save_hyperparameters() must not copy it
    return model


# ---------------------------------------------------------------------------------------------------- TLS


def test_a_server_behind_tls_with_a_private_ca_is_used_like_mlflows_client(
    tls_front, tls_certs, experiment_name, monkeypatch
):
    cert, _ = tls_certs
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tls_front.uri, server_wait=10)
    make_trainer(logger).fit(TinyModel(), TinyData())
    assert logger.flush(timeout=30) == 0
    client = MlflowClient(tls_front.uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)


def test_insecure_tls_is_honoured(tls_front, experiment_name, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tls_front.uri, server_wait=10)
    make_trainer(logger).fit(TinyModel(), TinyData())
    client = MlflowClient(tls_front.uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)


def test_an_untrusted_certificate_fails_at_once_and_says_how_to_trust_it(tls_front, experiment_name, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=tls_front.uri, server_wait=60)
    model = model_with({})
    with pytest.raises(UntrustedCertificateError, match="MLFLOW_TRACKING_SERVER_CERT_PATH") as refused:
        make_trainer(logger).fit(model, TinyData())
    assert "MLFLOW_TRACKING_INSECURE_TLS" in str(refused.value)
    assert model.global_step == 0, "no training step may run before the server is known to work"


# ---------------------------------------------------------------------------------------------------- basic auth


@pytest.fixture
def user(auth_server) -> Credentials:
    name = f"user-{uuid.uuid4().hex[:8]}"
    return create_user(auth_server.uri, auth_server.admin, name, "Secret-" + uuid.uuid4().hex)


def use(monkeypatch: pytest.MonkeyPatch, creds: Credentials) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", creds.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds.password)


def test_wrong_credentials_fail_before_training_naming_the_variables_not_the_secret(
    auth_server, user, experiment_name, monkeypatch, capfd, caplog
):
    wrong = "Wrong-" + uuid.uuid4().hex
    use(monkeypatch, Credentials(user.username, wrong))
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=auth_server.uri, server_wait=10)
    model = model_with({})
    with pytest.raises(CredentialsRefusedError) as refused:
        make_trainer(logger).fit(model, TinyData())
    message = str(refused.value)
    assert "MLFLOW_TRACKING_PASSWORD" in message and "401" in message
    assert model.global_step == 0
    out, err = capfd.readouterr()
    assert_no_secret(wrong, message, out, err, caplog.text)


def test_no_credentials_at_all_names_both_ways_to_give_them(auth_server, experiment_name, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=auth_server.uri, server_wait=10)
    with pytest.raises(CredentialsRefusedError, match=r"MLFLOW_TRACKING_USERNAME.*MLFLOW_TRACKING_TOKEN"):
        make_trainer(logger).fit(TinyModel(), TinyData())


def test_a_password_changed_mid_fit_keeps_every_point_for_sync(
    auth_server, user, experiment_name, monkeypatch, tmp_path, capfd, caplog
):
    """The password changes at step 5 of 16: the fit goes on, every later write is journaled (not dropped), the
    message names the journal file and the variables, and one sync with the new password delivers everything."""
    use(monkeypatch, user)
    new = Credentials(user.username, "Renewed-" + uuid.uuid4().hex)
    revoke = {5: lambda: change_password(auth_server.uri, auth_server.admin, user.username, new.password)}
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=auth_server.uri, flush_timeout=10)
    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(model_with(revoke), TinyData())

    journal = journal_path(logger.save_dir, logger.run_id)
    assert journal.exists(), "writes refused for credentials must be kept on disk"
    assert "MLFLOW_TRACKING_PASSWORD" in caplog.text
    assert f"lightning-mlflow sync {journal}" in caplog.text
    assert "refused" in caplog.text and "the store refused" not in caplog.text  # no point counted as refused

    delivered = sync(Path(logger.save_dir), {"MLFLOW_TRACKING_PASSWORD": new.password})
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    use(monkeypatch, new)
    client = MlflowClient(auth_server.uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)
    assert not journal.exists()
    out, err = capfd.readouterr()
    recorded = text_of_run(auth_server.uri, logger.run_id, tmp_path / "download")
    for secret in (user.password, new.password, auth_server.admin.password):
        assert_no_secret(secret, out, err, caplog.text, delivered.stdout, delivered.stderr, recorded)


def test_a_renewed_password_resumes_delivery_without_a_restart(auth_server, user, experiment_name, monkeypatch, caplog):
    """A token refresher (here: the test) puts the new password in the environment mid-fit; the writer reads the
    credentials again when they are refused, so everything arrives during the fit, with no sync."""
    use(monkeypatch, user)
    new = Credentials(user.username, "Renewed-" + uuid.uuid4().hex)

    def rotate() -> None:
        change_password(auth_server.uri, auth_server.admin, user.username, new.password)

    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=auth_server.uri, flush_timeout=20)
    # A flush at step 5 meets the refusal (the writer otherwise batches past a fit this short); step 9 renews.
    actions = {3: rotate, 5: lambda: logger.flush(timeout=5), 9: lambda: use(monkeypatch, new)}
    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(model_with(actions), TinyData())
    client = MlflowClient(auth_server.uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)
    assert not journal_path(logger.save_dir, logger.run_id).exists()
    assert "delivery resumed" in caplog.text


# ---------------------------------------------------------------------------------------------------- fault proxy


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(lambda p: p.fail_every(3, status=503), id="503-every-3rd"),
        pytest.param(lambda p: p.fail_every(4, status=429, retry_after=1), id="429-retry-after"),
        pytest.param(lambda p: p.fail_every(5, status=500), id="500-every-5th"),
        pytest.param(lambda p: p.reset_every(4), id="reset-every-4th"),
        pytest.param(lambda p: setattr(p, "latency", 0.05), id="latency-50ms"),
    ],
)
def test_transient_faults_lose_nothing_and_store_nothing_twice(
    fault_proxy, experiment_name, faults, monkeypatch, tmp_path, capfd, caplog
):
    token = "tok-" + uuid.uuid4().hex  # sent with every request; must never be recorded or printed
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=fault_proxy.uri, server_wait=10)
    _ = logger.run_id  # the run is created through the proxy before the faults start
    faults(fault_proxy)
    with caplog.at_level(logging.INFO):
        make_trainer(logger).fit(TinyModel(), TinyData())
    assert logger.flush(timeout=60) == 0
    fault_proxy.clear_faults()
    client = MlflowClient(fault_proxy.upstream)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)
    out, err = capfd.readouterr()
    assert_no_secret(token, out, err, caplog.text, text_of_run(fault_proxy.upstream, logger.run_id, tmp_path / "dl"))


def test_a_stalled_response_is_retried_and_the_point_kept_once(fault_proxy, experiment_name, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=fault_proxy.uri, server_wait=10)
    _ = logger.run_id
    fault_proxy.stall_every(3, 4.0, path_contains="log-batch")
    make_trainer(logger).fit(TinyModel(), TinyData())
    assert logger.flush(timeout=60) == 0
    fault_proxy.clear_faults()
    client = MlflowClient(fault_proxy.upstream)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)


def test_a_token_refused_then_accepted_again_delivers_everything(fault_proxy, experiment_name, caplog):
    """401 after a few requests (an expired token), accepted again mid-fit (renewed): nothing lost, no sync."""
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=fault_proxy.uri, server_wait=10)
    _ = logger.run_id
    # The token expires at step 2; a flush at step 5 meets the refusal (the writer otherwise batches past a fit
    # this short); step 12 renews it.
    actions = {
        2: lambda: fault_proxy.unauthorized_after(0),
        5: lambda: logger.flush(timeout=5),
        12: fault_proxy.authorize,
    }
    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(model_with(actions), TinyData())
    client = MlflowClient(fault_proxy.upstream)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)
    assert "MLFLOW_TRACKING_USERNAME" in caplog.text  # what to fix was said once, while it was refused


def test_a_run_refused_for_credentials_is_not_sent_point_by_point(fault_proxy, experiment_name, caplog):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=fault_proxy.uri, flush_timeout=5)
    _ = logger.run_id
    fault_proxy.unauthorized_after(0)
    before = fault_proxy.requests
    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(TinyModel(), TinyData())
    # A refusal for credentials stops delivery: a handful of retries, not a request per point.
    assert fault_proxy.requests - before < 12, fault_proxy.requests_by_path
    journal = journal_path(logger.save_dir, logger.run_id)
    assert journal.exists()
    assert caplog.text.count("refused the credentials") == 1 + caplog.text.count("writes are not delivered")
    fault_proxy.clear_faults()
    delivered = sync(Path(logger.save_dir))
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    client = MlflowClient(fault_proxy.upstream)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)


# ---------------------------------------------------------------------------------------------------- our own bugs


class BuggyTransport(ClientTransport):
    """A transport with a bug of this package's kind: neither the network nor MLflow raises."""

    calls = 0

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        BuggyTransport.calls += 1
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")


def test_a_bug_is_reported_once_with_its_traceback_and_its_data_kept(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("bug"))
    path = journal_path(tmp_path, run.info.run_id)
    writer = RunWriter(BuggyTransport(client), run.info.run_id, Journal(path, Header(run.info.run_id, uri)))
    with caplog.at_level(logging.ERROR):
        writer.log_metrics([("loss", 0.5, 1_000, step) for step in range(10)])
        report = writer.flush(10)
        writer.log_metrics([("loss", 0.5, 1_000, step) for step in range(10, 20)])
        later = writer.flush(2)
    assert BuggyTransport.calls == 1, "a bug is not retried"
    assert report.halted and "bug" in report.halted
    assert later.pending == 20 and later.journal == str(path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None and "TypeError" in caplog.text
    writer.park()

    delivered = sync(path)
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    steps = [point.step for point in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(20))


def test_fault_classes_of_real_answers():
    from lightning_mlflow_ext.delivery.faults import classify_response

    assert classify_response("u", 401, "").fault is Fault.RUN_WIDE
    assert classify_response("u", 503, "").fault is Fault.TRANSIENT
    answer = classify_response("u", 429, "", {"Retry-After": "3"})
    assert answer.fault is Fault.TRANSIENT and answer.retry_after == 3
    bad = '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid metric name"}'
    assert classify_response("u", 400, bad).fault is Fault.ONE_RECORD
    gone = '{"error_code": "INVALID_PARAMETER_VALUE", "message": "The run abc must be in the \'active\' state."}'
    assert classify_response("u", 400, gone).fault is Fault.RUN_WIDE


def test_a_deleted_run_stops_delivery_and_keeps_the_writes(mlflow_server, experiment_name, caplog):
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=mlflow_server.uri, flush_timeout=5)
    client = MlflowClient(mlflow_server.uri)

    def delete() -> None:
        logger.flush(timeout=30)
        client.delete_run(logger.run_id)

    with caplog.at_level(logging.WARNING):
        make_trainer(logger).fit(model_with({4: delete}), TinyData())
    assert "mlflow runs restore" in caplog.text
    journals = find_journals(logger.save_dir)
    assert journals, "writes for a deleted run are kept, to deliver once it is restored"
    client.restore_run(logger.run_id)
    delivered = sync(Path(logger.save_dir))
    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)


# ---------------------------------------------------------------------------------------------------- a killed server


@pytest.fixture
def killable_server(mlflow_server):
    yield mlflow_server
    if not mlflow_server.running:
        mlflow_server.start()


def kill_server(server) -> None:
    """SIGKILL the whole server process group: no graceful shutdown, requests in flight are cut."""
    import os
    import signal

    for pid in server.process_group():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.stop()  # reaps the process and waits for the port to be free


def test_a_server_killed_mid_fit_and_restarted_loses_nothing(killable_server, experiment_name):
    server = killable_server
    logger = MLflowLogger(experiment_name=experiment_name, tracking_uri=server.uri, flush_timeout=60)
    actions = {3: lambda: kill_server(server), 10: server.start}
    make_trainer(logger).fit(model_with(actions), TinyData())
    client = MlflowClient(server.uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert_every_point_once(client, logger.run_id)
    assert not journal_path(logger.save_dir, logger.run_id).exists()


def test_a_refused_request_is_sent_again_only_with_renewed_credentials(auth_server, user, monkeypatch):
    from fault_servers import FaultProxy

    from lightning_mlflow_ext.delivery.transport import Endpoint

    with FaultProxy(auth_server.uri) as proxy:
        use(monkeypatch, Credentials(user.username, "Wrong-" + uuid.uuid4().hex))
        endpoint = Endpoint(proxy.uri)
        path = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        before = proxy.requests
        assert endpoint.request("GET", path, None, 10).status == 401
        assert proxy.requests - before == 1, "refused with the same credentials: not repeated"
        use(monkeypatch, user)  # renewed after the endpoint read the old ones
        before = proxy.requests
        assert endpoint.request("GET", path, None, 10).status == 200
        assert proxy.requests - before == 2, "refused, credentials read again, sent once more"
