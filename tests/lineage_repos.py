"""Real git and DVC repositories in temporary folders, for the lineage tests.

Git runs through its command line, DVC through its Python API (in-process: the CLI would cost a Python
start per command). Nothing is faked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDENTITY = {
    "GIT_AUTHOR_NAME": "Lineage Test",
    "GIT_AUTHOR_EMAIL": "lineage@example.com",
    "GIT_COMMITTER_NAME": "Lineage Test",
    "GIT_COMMITTER_EMAIL": "lineage@example.com",
}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; return stdout without the trailing newline; fail the test on an error."""
    proc = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **IDENTITY},
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.rstrip("\n")


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def git_repo(root: Path, files: dict[str, str | bytes], *, commit: bool = True) -> Path:
    """A git repository at ``root`` holding ``files`` (committed unless ``commit=False``)."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    write(root, files)
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "initial")
    return root


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


TRAIN = {"data/train/a.txt": "alpha\n", "data/train/b.txt": "beta\n", "data/train/sub/c.bin": b"\x00\x01\x02"}
RAW = {"data/raw/x.csv": "x,1\n", "data/raw/y.csv": "y,2\n"}
LABELS = {"data/labels.csv": "id,label\n1,cat\n"}


@contextlib.contextmanager
def dvc_repo(root: Path) -> Iterator[Any]:
    """DVC's ``Repo`` for ``root``, with the working directory there (DVC reads relative targets from it)."""
    from dvc.repo import Repo

    previous = Path.cwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            yield repo
    finally:
        os.chdir(previous)


def build_dvc_template(base: Path) -> Path:
    """``base/repo``: git + DVC, with a local-folder default remote ``base/remote`` (recorded relatively).

    - ``data/train`` (folder) and ``data/labels.csv`` (file): ``dvc add``-ed, pushed;
    - ``data/raw``: plain git;
    - ``data/prepared``: output of the DVC stage ``prepare`` (in ``dvc.lock``), pushed;
    - ``train.py``: code. Everything is committed on ``main``.
    """
    from dvc.repo import Repo

    repo_dir = git_repo(base / "repo", {"train.py": "print('train')\n", **TRAIN, **RAW, **LABELS}, commit=False)
    (base / "remote").mkdir()
    Repo.init(str(repo_dir)).close()
    with dvc_repo(repo_dir) as repo:
        with repo.config.edit() as conf:
            # Read relative to the working directory (the repository), stored relative to .dvc/config as
            # "../../remote": a copy of base/ keeps a remote of its own.
            conf["remote"]["store"] = {"url": "../remote"}
            conf["core"]["remote"] = "store"
        repo.add(["data/train", "data/labels.csv"])
        repo.stage.add(name="prepare", deps=["data/raw"], outs=["data/prepared"], cmd="cp -r data/raw data/prepared")
        repo.reproduce("prepare")
        repo.push()
    commit_all(repo_dir, "data")
    return repo_dir


def copy_template(template_repo: Path, dest: Path) -> Path:
    """A private copy of a template's folder (repository and remote); returns the copied repository."""
    shutil.copytree(template_repo.parent, dest, symlinks=True)
    return dest / template_repo.name


def dvc_add(repo_dir: Path, *targets: str, push: bool = False) -> None:
    with dvc_repo(repo_dir) as repo:
        repo.add(list(targets))
        if push:
            repo.push()


def read_tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) by relative path, with its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
