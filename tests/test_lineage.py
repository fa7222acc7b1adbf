"""Data lineage as a user reads it back: fingerprints of real git and DVC data, the dataset inputs of a run,
and recorded sources that give back the exact bytes a run read, in another process, after the data moved on.

Every repository is real (git CLI, DVC's Python API, a local-folder DVC remote); nothing is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from lineage_repos import (
    LABELS,
    RAW,
    build_dvc_template,
    commit_all,
    copy_template,
    dvc_add,
    dvc_repo,
    git,
    git_repo,
    read_tree,
    write,
)
from mlflow.data.dataset_source_registry import resolve_dataset_source

from lightning_mlflow_ext.commands import main as cli_main
from lightning_mlflow_ext.lineage import (
    DataPathNotFoundError,
    DVCDatasetSource,
    GitDatasetSource,
    SourceLoadError,
    code_diff,
    code_state,
    fingerprint,
    log_datasets,
    untracked_files,
)

try:
    import dvc.repo  # noqa: F401

    HAVE_DVC = True
except ImportError:
    HAVE_DVC = False
needs_dvc = pytest.mark.skipif(not HAVE_DVC, reason="dvc is not importable: pip install 'lightning-mlflow-ext[dvc]'")

SECRET_URL = "https://alice:s3cr3t-t0ken@example.com/org/data.git"
SECRET_PARTS = ("s3cr3t-t0ken", "alice:")


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The user's ~/.gitconfig (insteadOf rewrites, hooks, signing) must not change what these tests see.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def dvc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_DVC:
        pytest.skip("dvc is not importable: pip install 'lightning-mlflow-ext[dvc]'")
    return build_dvc_template(tmp_path_factory.mktemp("dvc-template"))


@pytest.fixture
def dvc_workspace(dvc_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template: git + DVC repository, everything committed and pushed."""
    return copy_template(dvc_template, tmp_path / "work")


@pytest.fixture
def data_repo(tmp_path: Path) -> Path:
    """A plain git repository with a data folder, a data file and some code, all committed on main."""
    return git_repo(tmp_path / "repo", {**RAW, **LABELS, "train.py": "print('train')\n"})


# ---- git --------------------------------------------------------------------------------------------------


def test_committed_folder_and_file_are_fingerprinted_by_their_git_objects(data_repo: Path) -> None:
    head = git(data_repo, "rev-parse", "HEAD")
    folder = fingerprint(data_repo / "data/raw")
    single = fingerprint(data_repo / "data/labels.csv")

    assert folder.tracker == single.tracker == "git"
    assert folder.path == "data/raw" and single.path == "data/labels.csv"
    assert folder.git_sha == git(data_repo, "rev-parse", "HEAD:data/raw")  # a tree
    assert single.git_sha == git(data_repo, "rev-parse", "HEAD:data/labels.csv")  # a blob
    assert folder.digest == "git:" + folder.git_sha[:32] and len(folder.digest) == 36
    assert (folder.size, folder.nfiles) == (8, 2)
    assert (single.size, single.nfiles) == (len(LABELS["data/labels.csv"]), 1)
    for fp in (folder, single):
        assert (fp.commit, fp.branch, fp.repo_url) == (head, "main", None)
        assert fp.code_dirty is False and fp.data_dirty is False and fp.pushed is None
        assert fp.problems == () and fp.reproducible
    assert code_state(data_repo) == {"mlflow.source.git.commit": head, "mlflow.source.git.branch": "main",
                                     "mlflow.source.git.dirty": "false"}  # fmt: skip
    assert code_diff(data_repo) is None and untracked_files(data_repo) == []


def test_same_bytes_give_the_same_digest_wherever_they_are(data_repo: Path, tmp_path: Path) -> None:
    committed = fingerprint(data_repo / "data/raw")
    elsewhere = tmp_path / "outside" / "raw"
    write(elsewhere.parent, {f"raw/{Path(k).name}": v for k, v in RAW.items()})

    outside = fingerprint(elsewhere)

    assert outside.digest == committed.digest
    assert outside.tracker is None and outside.commit is None and outside.data_dirty is None


def test_changed_data_is_dirty_and_gets_the_digest_git_will_record(data_repo: Path) -> None:
    clean = fingerprint(data_repo / "data/raw")
    (data_repo / "data/raw/x.csv").write_text("x,100\n")

    dirty = fingerprint(data_repo / "data/raw")

    assert dirty.data_dirty is True and dirty.code_dirty is True and not dirty.reproducible
    assert dirty.git_sha == clean.git_sha  # still what the commit records
    assert dirty.digest != clean.digest
    assert any("uncommitted changes" in problem for problem in dirty.problems)
    assert fingerprint(data_repo / "data/labels.csv").data_dirty is False  # other data is untouched
    commit_all(data_repo, "new x")
    assert fingerprint(data_repo / "data/raw").digest == dirty.digest


def test_untracked_file_inside_data_folder_makes_it_dirty(data_repo: Path) -> None:
    write(data_repo, {"data/raw/z.csv": "z,3\n", "notes.txt": "scratch"})

    fp = fingerprint(data_repo / "data/raw")

    assert fp.data_dirty is True and fp.nfiles == 3
    assert fp.code_dirty is False  # untracked files are not code changes, as in MLflow's own tag
    assert sorted(untracked_files(data_repo) or []) == ["data/raw/z.csv", "notes.txt"]


def test_untracked_data_has_no_commit_to_point_at(data_repo: Path) -> None:
    write(data_repo, {"data/new/n.csv": "n\n"})

    fp = fingerprint(data_repo / "data/new")

    assert fp.tracker is None and fp.git_sha is None and fp.data_dirty is True
    assert any("not committed to git" in problem for problem in fp.problems)


def test_edited_code_gives_dirty_tag_and_a_diff(data_repo: Path) -> None:
    (data_repo / "train.py").write_text("print('train harder')\n")

    assert code_state(data_repo)["mlflow.source.git.dirty"] == "true"
    diff = code_diff(data_repo)
    assert diff is not None and "+print('train harder')" in diff and "-print('train')" in diff
    assert fingerprint(data_repo / "data/raw").data_dirty is False  # the data itself is clean


def test_diff_is_cut_at_one_megabyte_with_a_marker(data_repo: Path) -> None:
    (data_repo / "big.txt").write_text("")
    commit_all(data_repo, "big")
    (data_repo / "big.txt").write_text("".join(f"line {i:07d} of a long generated file\n" for i in range(40_000)))
    full = subprocess.run(["git", "diff", "HEAD"], cwd=data_repo, capture_output=True, check=True).stdout

    diff = code_diff(data_repo)

    assert diff is not None and len(full) > 1_000_000
    assert diff.endswith(f"[diff cut at 1 MB of {len(full)} bytes]\n")
    body = diff[: diff.rindex("[diff cut")].encode()
    assert len(body) <= 1_000_000 and full.startswith(body) and body.endswith(b"\n")


def test_detached_head_has_a_commit_and_no_branch(data_repo: Path) -> None:
    first = git(data_repo, "rev-parse", "HEAD")
    write(data_repo, {"data/raw/x.csv": "x,2\n"})
    commit_all(data_repo, "second")
    git(data_repo, "checkout", "-q", "--detach", first)

    fp = fingerprint(data_repo / "data/raw")

    assert fp.commit == first and fp.branch is None and fp.data_dirty is False
    assert "mlflow.source.git.branch" not in code_state(data_repo)
    assert code_state(data_repo)["mlflow.source.git.commit"] == first


def test_repository_without_commits(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "fresh", {**RAW, "train.py": "print(1)\n"}, commit=False)
    git(root, "add", "train.py")

    fp = fingerprint(root / "data/raw")

    assert fp.commit is None and fp.git_sha is None and fp.branch == "main"
    assert fp.tracker is None and fp.data_dirty is True
    assert any("no commits" in problem for problem in fp.problems)
    assert code_state(root) == {"mlflow.source.git.branch": "main", "mlflow.source.git.dirty": "true"}
    diff = code_diff(root)  # staged files, against the empty tree
    assert diff is not None and "+print(1)" in diff


def test_outside_any_repository_there_is_no_lineage_and_no_crash(tmp_path: Path) -> None:
    write(tmp_path / "loose", {"a.csv": "a\n"})

    fp = fingerprint(tmp_path / "loose")

    assert fp.tracker is None and fp.commit is None and fp.repo_url is None and fp.code_dirty is None
    assert fp.path == str(tmp_path / "loose") and fp.nfiles == 1
    assert any("no git repository" in problem for problem in fp.problems)
    assert code_state(tmp_path / "loose") == {}
    assert code_diff(tmp_path / "loose") is None and untracked_files(tmp_path / "loose") is None


def test_missing_path_is_a_clear_error(data_repo: Path) -> None:
    with pytest.raises(DataPathNotFoundError, match="does not exist"):
        fingerprint(data_repo / "data/nope")


# ---- DVC --------------------------------------------------------------------------------------------------


def _recorded_md5(dvc_file: Path) -> str:
    import yaml

    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


@needs_dvc
def test_dvc_folder_and_file_pushed_and_clean(dvc_workspace: Path) -> None:
    folder = fingerprint(dvc_workspace / "data/train")
    single = fingerprint(dvc_workspace / "data/labels.csv")

    assert folder.tracker == single.tracker == "dvc"
    assert folder.dvc_md5 == _recorded_md5(dvc_workspace / "data/train.dvc") == folder.digest
    assert folder.dvc_md5.endswith(".dir") and (folder.size, folder.nfiles) == (14, 3)
    assert single.dvc_md5 == _recorded_md5(dvc_workspace / "data/labels.csv.dvc") == single.digest
    assert (single.size, single.nfiles) == (len(LABELS["data/labels.csv"]), 1)
    for fp in (folder, single):
        assert fp.pushed is True and fp.data_dirty is False and fp.code_dirty is False and fp.reproducible
        assert fp.dvc_remote == "store" and fp.dvc_remote_url == str(dvc_workspace.parent / "remote")
        assert fp.commit == git(dvc_workspace, "rev-parse", "HEAD") and fp.git_sha is None


@needs_dvc
def test_dvc_pipeline_output_is_read_from_dvc_lock(dvc_workspace: Path) -> None:
    import yaml

    lock = yaml.safe_load((dvc_workspace / "dvc.lock").read_text())

    fp = fingerprint(dvc_workspace / "data/prepared")

    assert fp.tracker == "dvc" and fp.dvc_md5 == lock["stages"]["prepare"]["outs"][0]["md5"]
    assert fp.pushed is True and fp.data_dirty is False


@needs_dvc
def test_unpushed_dvc_data_says_so(dvc_workspace: Path) -> None:
    write(dvc_workspace, {"data/extra.csv": "e\n"})
    dvc_add(dvc_workspace, "data/extra.csv")
    commit_all(dvc_workspace, "extra")

    fp = fingerprint(dvc_workspace / "data/extra.csv")

    assert fp.pushed is False and fp.data_dirty is False and not fp.reproducible
    assert any("dvc push" in problem for problem in fp.problems)
    assert fingerprint(dvc_workspace / "data/extra.csv", check_remote=False).pushed is None


@needs_dvc
def test_dirty_dvc_data_gets_the_md5_dvc_will_record(dvc_workspace: Path) -> None:
    recorded = fingerprint(dvc_workspace / "data/train").digest
    (dvc_workspace / "data/train/a.txt").write_text("ALPHA\n")

    dirty = fingerprint(dvc_workspace / "data/train")

    assert dirty.data_dirty is True and dirty.dvc_md5 == recorded and dirty.digest != recorded
    dvc_add(dvc_workspace, "data/train")
    assert _recorded_md5(dvc_workspace / "data/train.dvc") == dirty.digest  # DVC agrees with our hash
    # The workspace now matches the .dvc file, but no commit records that file yet: still dirty.
    staged = fingerprint(dvc_workspace / "data/train", check_remote=False)
    assert staged.data_dirty is True and any("train.dvc is not committed" in p for p in staged.problems)
    commit_all(dvc_workspace, "new train")
    assert fingerprint(dvc_workspace / "data/train", check_remote=False).data_dirty is False


@needs_dvc
def test_a_dvc_file_dvc_cannot_read_is_reported_not_raised(dvc_workspace: Path) -> None:
    recorded = _recorded_md5(dvc_workspace / "data/train.dvc")
    (dvc_workspace / "data/train.dvc").write_text("outs: [this is: not, a: dvc file\n")

    fp = fingerprint(dvc_workspace / "data/train")

    assert fp.tracker == "dvc" and fp.data_dirty is None and fp.digest == recorded
    assert any("DVC failed to read it" in problem for problem in fp.problems)


def test_without_dvc_installed_dvc_data_falls_back_with_an_install_hint(dvc_template: Path, tmp_path: Path) -> None:
    repo = copy_template(dvc_template, tmp_path / "work")
    script = textwrap.dedent(
        """
        import json, logging, sys
        sys.modules["dvc"] = None  # as if dvc were not installed: `import dvc` raises ImportError
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from lightning_mlflow_ext.lineage import DVCDatasetSource, DVCNotInstalledError, fingerprint
        out = {}
        for rel in ("data/train", "data/prepared"):
            fp = fingerprint(sys.argv[1] + "/" + rel)
            out[rel] = [fp.tracker, fp.digest, fp.data_dirty, fp.pushed, list(fp.problems)]
        try:
            DVCDatasetSource(sys.argv[1], "HEAD", "data/train").load(sys.argv[2])
        except DVCNotInstalledError as exc:
            out["load"] = str(exc)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(repo), str(tmp_path / "dst")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    hint = "pip install 'lightning-mlflow-ext[dvc]'"
    tracker, digest, data_dirty, pushed, problems = out["data/train"]
    assert (tracker, data_dirty, pushed) == ("dvc", None, None)
    assert digest == _recorded_md5(repo / "data/train.dvc")  # the same digest as with dvc installed
    assert any(hint in problem and "train.dvc" in problem for problem in problems)
    assert any(hint in problem and "dvc.lock" in problem for problem in out["data/prepared"][4])
    assert hint in out["load"] and hint in proc.stderr  # warned once through logging, too


# ---- recording in MLflow ----------------------------------------------------------------------------------


def _new_run(client: mlflow.MlflowClient, experiment_name: str) -> str:
    experiment_id = client.create_experiment(experiment_name)
    return str(client.create_run(experiment_id).info.run_id)


def test_one_dataset_input_per_split_with_its_context(
    client: mlflow.MlflowClient, experiment_name: str, data_repo: Path
) -> None:
    run_id = _new_run(client, experiment_name)
    splits = {"train": data_repo / "data/raw", "val": data_repo / "data/raw", "test": data_repo / "data/labels.csv"}

    fingerprints = log_datasets(client, run_id, splits)
    log_datasets(client, run_id, splits)  # again, as on a resume: nothing doubles

    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_context = {tag.value: inp for inp in inputs for tag in inp.tags if tag.key == "mlflow.data.context"}
    assert sorted(by_context) == ["test", "train", "val"] and len(inputs) == 3
    for split, inp in by_context.items():
        assert inp.dataset.name == split and inp.dataset.digest == fingerprints[split].digest
        source = mlflow.data.get_source(inp)
        assert isinstance(source, GitDatasetSource)
        assert (source.url, source.commit, source.path) == (
            str(data_repo),
            git(data_repo, "rev-parse", "HEAD"),
            fingerprints[split].path,
        )
        assert json.loads(inp.dataset.profile)["git_sha"] == fingerprints[split].git_sha


def _everything_recorded(client: mlflow.MlflowClient, tracking_uri: str, run_id: str, dst: Path) -> str:
    run = client.get_run(run_id)
    parts = [json.dumps(run.data.tags), json.dumps(run.data.params)]
    for inp in run.inputs.dataset_inputs:
        parts += [inp.dataset.source, inp.dataset.profile or "", json.dumps([(t.key, t.value) for t in inp.tags])]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst), tracking_uri=tracking_uri))
    parts += [p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()]
    return "\n".join(parts)


def test_credentials_in_the_remote_url_reach_nothing_in_the_run(
    client: mlflow.MlflowClient, tracking_uri: str, experiment_name: str, data_repo: Path, tmp_path: Path
) -> None:
    git(data_repo, "remote", "add", "origin", SECRET_URL)
    (data_repo / "train.py").write_text(f"REPO = {SECRET_URL!r}\n")  # the secret also sits in the diff
    run_id = _new_run(client, experiment_name)

    for key, value in code_state(data_repo).items():
        client.set_tag(run_id, key, value)
    fps = log_datasets(client, run_id, {"train": data_repo / "data/raw"})
    client.log_text(run_id, code_diff(data_repo) or "", "code/diff.patch")
    client.log_dict(run_id, fps["train"].to_dict(), "lineage/train.json")

    recorded = _everything_recorded(client, tracking_uri, run_id, tmp_path / "artifacts")
    assert "example.com/org/data.git" in recorded  # the URL is there...
    for secret in SECRET_PARTS:
        assert secret not in recorded  # ...without its credentials
    assert client.get_run(run_id).data.tags["mlflow.source.git.repoURL"] == "https://example.com/org/data.git"


def test_recorded_sources_give_back_the_original_bytes_in_a_new_process(
    client: mlflow.MlflowClient, tracking_uri: str, experiment_name: str, dvc_template: Path, tmp_path: Path
) -> None:
    repo = copy_template(dvc_template, tmp_path / "work")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    git(repo, "remote", "add", "origin", origin.as_uri())  # fetched over git's file:// transport
    git(repo, "push", "-q", "-u", "origin", "main")
    original = {"dvc": read_tree(repo / "data/train"), "git": read_tree(repo / "data/raw")}
    run_id = _new_run(client, experiment_name)
    log_datasets(client, run_id, {"train": repo / "data/train", "raw": repo / "data/raw"})

    # The data moves on: changed, recorded, pushed; the old DVC objects leave the local cache.
    write(repo, {"data/train/a.txt": "changed\n", "data/raw/x.csv": "x,changed\n"})
    dvc_add(repo, "data/train", push=True)
    commit_all(repo, "v2")
    git(repo, "push", "-q", "origin", "main")
    with dvc_repo(repo) as dvc:
        dvc.gc(workspace=True, force=True)
    moved = repo.rename(tmp_path / "work" / "moved")  # on another machine: only the recorded URL can serve it

    script = textwrap.dedent(
        """
        import json, sys
        import mlflow
        client = mlflow.MlflowClient(sys.argv[1])
        out = {}
        for i, inp in enumerate(client.get_run(sys.argv[2]).inputs.dataset_inputs):
            source = mlflow.data.get_source(inp)
            out[source._get_source_type()] = source.load(sys.argv[3] + f"/{i}")
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, tracking_uri, run_id, str(tmp_path / "loaded")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])

    assert {kind: read_tree(Path(path)) for kind, path in loaded.items()} == original
    assert read_tree(moved / "data/train") != original["dvc"]  # the working copy really changed


UNREACHABLE = "https://127.0.0.1:9/org/data.git"  # nothing listens on the discard port


@needs_dvc
def test_sources_load_from_the_local_repository_when_the_git_remote_cannot_be_reached(
    client: mlflow.MlflowClient, experiment_name: str, dvc_template: Path, tmp_path: Path
) -> None:
    # A private git host, an offline cluster: the run was trained in a repository on this machine.
    repo = copy_template(dvc_template, tmp_path / "work")
    git(repo, "remote", "add", "origin", UNREACHABLE)
    original = {"dvc": read_tree(repo / "data/train"), "git": read_tree(repo / "data/raw")}
    run_id = _new_run(client, experiment_name)
    log_datasets(client, run_id, {"train": repo / "data/train", "raw": repo / "data/raw"})
    write(repo, {"data/train/a.txt": "changed\n", "data/raw/x.csv": "x,changed\n"})  # the data moves on
    dvc_add(repo, "data/train")
    commit_all(repo, "v2")

    sources = [mlflow.data.get_source(inp) for inp in client.get_run(run_id).inputs.dataset_inputs]
    assert sorted(s.url for s in sources) == [UNREACHABLE, UNREACHABLE]
    loaded = {s._get_source_type(): read_tree(Path(s.load(str(tmp_path / "loaded" / s._get_source_type()))))
              for s in sources}  # fmt: skip
    assert loaded == original

    # Neither the repository (moved away) nor the remote: the error names both places.
    repo.rename(tmp_path / "work" / "moved")
    for source in sources:
        with pytest.raises(SourceLoadError) as error:
            source.load(str(tmp_path / "again" / source._get_source_type()))
        message = str(error.value)
        assert f"the local repository {os.path.realpath(repo)}: not on this machine" in message
        assert UNREACHABLE in message


def test_mlflow_registers_the_sources_when_imported_first() -> None:
    # The entry point is loaded inside `import mlflow`; nothing it imports may need a finished `mlflow`.
    script = (
        "import mlflow.data.dataset_source_registry as r; "
        "names = [s.__name__ for s in r.get_registered_sources()]; "
        "assert 'GitDatasetSource' in names and 'DVCDatasetSource' in names, names"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_git_source_refuses_data_that_was_never_committed(data_repo: Path, tmp_path: Path) -> None:
    head = git(data_repo, "rev-parse", "HEAD")
    with pytest.raises(SourceLoadError, match="never committed"):
        GitDatasetSource(str(data_repo), head, "data/untracked").load(str(tmp_path / "dst"))
    with pytest.raises(SourceLoadError, match="not in the repository"):
        GitDatasetSource(str(data_repo), "0" * 40, "data/raw").load(str(tmp_path / "dst2"))


# ---- raw source strings and the CLI ---------------------------------------------------------------------


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.usefixtures("no_warnings")
def test_raw_source_strings_resolve_to_our_sources() -> None:
    git_source = resolve_dataset_source(f"git+{SECRET_URL}@{'a' * 40}#data/my set#1@v2")
    dvc_source = resolve_dataset_source("dvc+file:///srv/repos/data@v1.0#data/train")

    assert isinstance(git_source, GitDatasetSource) and isinstance(dvc_source, DVCDatasetSource)
    assert git_source.to_dict() == {"url": "https://example.com/org/data.git", "commit": "a" * 40,
                                    "path": "data/my set#1@v2"}  # fmt: skip
    assert dvc_source.to_dict() == {"url": "file:///srv/repos/data", "rev": "v1.0", "path": "data/train",
                                    "remote": None, "remote_url": None}  # fmt: skip
    assert DVCDatasetSource.from_json(dvc_source.to_json()).to_dict() == dvc_source.to_dict()
    assert resolve_dataset_source(git_source.uri).to_dict() == git_source.to_dict()
    for not_ours in ("git+https://example.com/r.git#data", "git+https://example.com/r.git@abc", "dvc:x", 42):
        assert not GitDatasetSource._can_resolve(not_ours) and not DVCDatasetSource._can_resolve(not_ours)


def test_cli_prints_what_a_run_would_record(data_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["lineage", str(data_repo / "data/raw"), "--check"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["digest"] == fingerprint(data_repo / "data/raw").digest
    assert record["source_type"] == "git" and record["source"]["path"] == "data/raw"

    (data_repo / "data/raw/x.csv").write_text("dirty\n")
    assert cli_main(["lineage", str(data_repo / "data/raw"), "--check"]) == 1
    assert json.loads(capsys.readouterr().out)["data_dirty"] is True
    assert cli_main(["lineage", str(data_repo / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
