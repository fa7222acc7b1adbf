"""A team server: ``mlflow server --workers 4`` on a real PostgreSQL, written to by many training processes at once.

The fixtures are in tests/team_server_fixtures.py; each training process runs tests/team_train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from team_server_fixtures import TEAM_SERVER_WORKERS, TeamServer
from team_train import N_EXTRA, expected_value

TRAIN_SCRIPT = Path(__file__).with_name("team_train.py")
N_PROCESSES = 8
N_STEPS = 300
METRIC_KEYS = ["loss", *(f"m{i}" for i in range(N_EXTRA))]  # 11 a step
FITS_TIMEOUT_S = 420.0  # a hang guard, not a speed check: ~75 s on an idle 2-core machine, 170 s when shared


def _child_env() -> dict[str, str]:
    """This process's environment without any MLFLOW_* variable: the script gets the URI as an argument."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def _tail(path: Path, n_chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return "<missing>"


def _workers(server_pid: int, group: list[int]) -> list[int]:
    """The uvicorn worker processes among the server's process group (multiprocessing children of uvicorn)."""
    found = []
    for pid in group:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmdline and pid != server_pid:
            found.append(pid)
    return found


def test_team_server_is_mlflow_on_postgres_with_four_workers(team_server: TeamServer, experiment_name: str) -> None:
    client = mlflow.MlflowClient(team_server.uri)
    experiment_id = client.create_experiment(experiment_name)
    # What the server stored is in the PostgreSQL database, read there with psql, not through MLflow.
    assert team_server.psql(f"SELECT name FROM experiments WHERE experiment_id = {int(experiment_id)}") == (
        experiment_name
    )
    assert team_server.backend_store_uri.startswith("postgresql://")
    assert team_server.server.backend_store_uri == team_server.backend_store_uri
    assert team_server.server.pid is not None
    deadline = time.monotonic() + 30
    while True:
        workers = _workers(team_server.server.pid, team_server.server.process_group())
        if len(workers) == TEAM_SERVER_WORKERS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(workers) == TEAM_SERVER_WORKERS, team_server.server.log_tail()


@pytest.mark.timeout(600)
def test_eight_concurrent_fits_into_a_team_server_store_every_point_once(
    team_server: TeamServer, experiment_name: str, tmp_path: Path
) -> None:
    run_names = [f"fit-{i}-{uuid.uuid4().hex[:6]}" for i in range(N_PROCESSES)]
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    env = _child_env()
    started = time.monotonic()
    try:
        for name in run_names:
            folder = tmp_path / name
            folder.mkdir()
            out, err = folder / "stdout.txt", folder / "stderr.txt"
            with open(out, "wb") as out_f, open(err, "wb") as err_f:
                proc = subprocess.Popen(
                    [sys.executable, str(TRAIN_SCRIPT), "--tracking-uri", team_server.uri,
                     "--experiment", experiment_name, "--run-name", name, "--steps", str(N_STEPS)],
                    stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, cwd=folder, env=env,
                )  # fmt: skip
            procs.append((proc, out, err))
        deadline = started + FITS_TIMEOUT_S
        for proc, _, err in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"a fit was still running after {FITS_TIMEOUT_S:.0f}s\n--- stderr (tail) ---\n{_tail(err)}"
                    f"\n--- server log (tail) ---\n{team_server.server.log_tail()}"
                )
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    elapsed = time.monotonic() - started
    print(f"{N_PROCESSES} concurrent fits of {N_STEPS} steps x {len(METRIC_KEYS)} metrics: {elapsed:.1f}s")

    failed = [
        f"{name}: exit code {proc.returncode}\n{_tail(err)}"
        for name, (proc, _, err) in zip(run_names, procs, strict=True)
        if proc.returncode
    ]
    assert not failed, "\n\n".join(failed)

    run_ids = [out.read_text().split()[-1] for _, out, _ in procs]
    assert len(set(run_ids)) == N_PROCESSES, run_ids
    client = mlflow.MlflowClient(team_server.uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    steps = list(range(N_STEPS))
    problems: list[str] = []
    for name, run_id in zip(run_names, run_ids, strict=True):
        run = client.get_run(run_id)
        assert (run.info.run_name, run.info.experiment_id) == (name, experiment.experiment_id)
        if run.info.status != "FINISHED":
            problems.append(f"{name} ({run_id}): status {run.info.status}")
        missing = set(METRIC_KEYS) - set(run.data.metrics)
        if missing:
            problems.append(f"{name} ({run_id}): no {sorted(missing)}")
        for key in sorted(set(run.data.metrics) | set(METRIC_KEYS)):
            history = client.get_metric_history(run_id, key)
            counts = Counter(point.step for point in history)
            duplicated = sorted(step for step, n in counts.items() if n > 1)
            if duplicated:
                problems.append(f"{name} ({run_id}) {key}: {len(duplicated)} steps stored twice or more: {duplicated}")
            if key not in METRIC_KEYS:
                continue  # the package's own keys (e.g. `epoch`): no duplicates is all that is asked here
            if sorted(counts) != steps:
                absent = sorted(set(steps) - set(counts))
                extra = sorted(set(counts) - set(steps))
                problems.append(f"{name} ({run_id}) {key}: {len(history)} points, steps absent {absent}, extra {extra}")
            if key != "loss":
                wrong = [(p.step, p.value) for p in history if p.value != expected_value(key, p.step)]
                if wrong:
                    problems.append(f"{name} ({run_id}) {key}: wrong values at (step, value) {wrong[:10]}")
    # The same, read in PostgreSQL itself: one row per (run, key, step) in MLflow's metrics table.
    ids = ", ".join(f"'{run_id}'" for run_id in run_ids)
    duplicated_rows = team_server.psql(
        f"SELECT run_uuid, key, step, count(*) FROM metrics WHERE run_uuid IN ({ids}) "
        "GROUP BY run_uuid, key, step HAVING count(*) > 1 ORDER BY 1, 2, 3 LIMIT 50"
    )
    if duplicated_rows:
        problems.append(f"metrics rows stored more than once (run, key, step, count):\n{duplicated_rows}")
    per_run = team_server.psql(
        f"SELECT run_uuid, count(*) FROM metrics WHERE run_uuid IN ({ids}) AND key IN "
        f"({', '.join(repr(k) for k in METRIC_KEYS)}) GROUP BY run_uuid"
    )
    rows = dict(line.split("|") for line in per_run.splitlines())
    if any(rows.get(run_id) != str(N_STEPS * len(METRIC_KEYS)) for run_id in run_ids):
        expected = N_STEPS * len(METRIC_KEYS)
        problems.append(f"rows of the {len(METRIC_KEYS)} metrics per run, expected {expected}: {rows}")
    assert not problems, "\n".join(problems)
