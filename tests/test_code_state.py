"""Code state on every run: which commit, branch and working tree produced it, and no credentials."""

from __future__ import annotations

import re
import subprocess
import sys

from lineage_repos import git, git_repo

SCRIPT = """
import sys
from lightning_mlflow_ext import MLflowLogger
logger = MLflowLogger(experiment_name="code", tracking_uri=sys.argv[1])
logger.log_metrics({"loss": 1.0}, step=0)
logger.finalize("success")
print(logger.run_id)
"""


def run_script_in(repo, tracking_uri: str) -> str:
    (repo / "train.py").write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(repo / "train.py"), tracking_uri], capture_output=True, text=True, timeout=240, cwd=repo
    )
    assert done.returncode == 0, done.stderr
    return re.findall(r"^[0-9a-f]{32}$", done.stdout, flags=re.MULTILINE)[0]


def test_created_runs_carry_commit_branch_dirty_and_a_clean_remote(tracking_uri, client, tmp_path):
    repo = git_repo(tmp_path / "project", {"model.py": "W = 1\n"})
    git(repo, "remote", "add", "origin", "https://alice:s3cr3t-token@git.example.com/team/project.git")
    (repo / "model.py").write_text("W = 2\n")  # an uncommitted change
    (repo / "notes.txt").write_text("untracked\n")
    run_id = run_script_in(repo, tracking_uri)

    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert tags["mlflow.source.git.branch"] == git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    assert tags["mlflow.source.git.dirty"] == "true"
    assert tags["mlflow.source.git.repoURL"] == "https://git.example.com/team/project.git"
    assert not any("s3cr3t" in value for value in [*tags.values(), *run.data.params.values()])

    diff = client.download_artifacts(run_id, "code/diff.patch", str(tmp_path / "dl"))
    with open(diff) as handle:
        text = handle.read()
    assert "-W = 1" in text and "+W = 2" in text
    untracked = client.download_artifacts(run_id, "code/untracked.txt", str(tmp_path / "dl"))
    with open(untracked) as handle:
        assert "notes.txt" in handle.read().split()


def test_outside_any_repository_no_git_tags_and_no_crash(tracking_uri, client, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    run_id = run_script_in(folder, tracking_uri)
    tags = client.get_run(run_id).data.tags
    assert not [key for key in tags if key.startswith("mlflow.source.git.")]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.list_artifacts(run_id, "code") == []
