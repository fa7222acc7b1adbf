"""What git knows about a path: its repository, commit, branch, dirty flags and the object it records.

Talks to the ``git`` command line; outside a repository (or without git) every function says so with None.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.utils import mlflow_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

from lightning_mlflow_ext.lineage.content import nearest_dir
from lightning_mlflow_ext.lineage.errors import SourceLoadError
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = [
    "DIFF_LIMIT",
    "GitPathState",
    "GitState",
    "code_diff",
    "code_state",
    "export_path",
    "git_path_state",
    "git_state",
    "has_changes",
    "has_commit",
    "is_local_repo",
    "repo_root",
    "untracked_files",
]

log = logging.getLogger(__name__)

# MLflow names this tag from 3.4 on (the name its own git context writes); 3.2 and 3.3 lack the constant.
MLFLOW_GIT_DIRTY: str = getattr(mlflow_tags, "MLFLOW_GIT_DIRTY", "mlflow.source.git.dirty")

DIFF_LIMIT = 1_000_000
"""Bytes of ``git diff`` that `code_diff` keeps (1 MB)."""


def _env() -> dict[str, str]:
    # Reading state must not take index.lock from under a user's concurrent `git` command, and a fetch for
    # `load()` must fail rather than wait for a password on a terminal.
    return {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


_warned_no_git = False


class _GitFailed(Exception):
    pass


def _git(cwd: Path, *args: str) -> str:
    """stdout of ``git -C cwd ARGS`` (trailing newline removed); `_GitFailed` on a non-zero exit."""
    global _warned_no_git
    try:
        proc = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, env=_env(), check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        if not _warned_no_git:
            _warned_no_git = True
            log.warning("git is not installed: no git lineage is recorded (install git to record it)")
        raise _GitFailed("git is not installed") from exc
    if proc.returncode != 0:
        raise _GitFailed(strip_url_credentials(proc.stderr.decode("utf-8", "replace").strip()))
    return proc.stdout.decode("utf-8", "surrogateescape").rstrip("\n")


def _git_or_none(cwd: Path, *args: str) -> str | None:
    try:
        return _git(cwd, *args)
    except _GitFailed:
        return None


# ---- the repository -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitState:
    """The repository around a path, as the code of a run sees it."""

    root: Path
    """Local working-tree root."""
    repo_url: str | None
    """URL of the remote (upstream of the branch, else ``origin``, else the first), credentials stripped."""
    commit: str | None
    """``HEAD`` commit; None in a repository with no commits."""
    branch: str | None
    """Current branch; None on a detached HEAD."""
    dirty: bool
    """Tracked files differ from ``HEAD`` (staged or not); untracked files do not count, as in MLflow."""
    object_format: str
    """``sha1`` or ``sha256``."""


def repo_root(path: str | os.PathLike[str]) -> Path | None:
    """Root of the git working tree holding ``path`` (which need not exist), or None outside any."""
    probe = nearest_dir(Path(os.path.abspath(path)))
    top = _git_or_none(probe, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def _remote_name(root: Path, branch: str | None) -> str | None:
    names = (_git_or_none(root, "remote") or "").split()
    if not names:
        return None
    upstream = _git_or_none(root, "config", "--get", f"branch.{branch}.remote") if branch else None
    if upstream in names:
        return upstream
    return "origin" if "origin" in names else sorted(names)[0]


def git_state(path: str | os.PathLike[str] = ".") -> GitState | None:
    """The state of the repository holding ``path``, or None when ``path`` is in no git repository."""
    root = repo_root(path)
    if root is None:
        return None
    commit = _git_or_none(root, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    branch = _git_or_none(root, "symbolic-ref", "-q", "--short", "HEAD")
    remote = _remote_name(root, branch)
    url = _git_or_none(root, "remote", "get-url", remote) if remote else None
    status = _git_or_none(root, "status", "--porcelain", "--untracked-files=no")
    return GitState(
        root=root,
        repo_url=strip_url_credentials(url) if url else None,
        commit=commit or None,
        branch=branch or None,
        dirty=bool(status),
        object_format=_git_or_none(root, "rev-parse", "--show-object-format") or "sha1",
    )


def code_state(path: str | os.PathLike[str] = ".") -> dict[str, str]:
    """MLflow's ``mlflow.source.git.*`` tags for the code at ``path``; empty outside a repository.

    ``MlflowClient.create_run`` does not set these (only the fluent ``mlflow.start_run`` does), so the
    plugin sets them itself. Keys whose value is unknown (no commit yet, detached HEAD, no remote) are left
    out rather than set to an empty string.
    """
    state = git_state(path)
    if state is None:
        return {}
    tags = {MLFLOW_GIT_DIRTY: "true" if state.dirty else "false"}
    if state.commit:
        tags[MLFLOW_GIT_COMMIT] = state.commit
    if state.branch:
        tags[MLFLOW_GIT_BRANCH] = state.branch
    if state.repo_url:
        tags[MLFLOW_GIT_REPO_URL] = state.repo_url
    return tags


def _limit_text(limit: int) -> str:
    return f"{limit // 1_000_000} MB" if limit % 1_000_000 == 0 else f"{limit} bytes"


def code_diff(path: str | os.PathLike[str] = ".", limit: int = DIFF_LIMIT) -> str | None:
    """``git diff`` of the working tree (staged and unstaged) against ``HEAD``, at most ``limit`` bytes.

    None outside a repository or when nothing tracked changed. A longer diff is cut at the last line that
    fits and ends with ``[diff cut at 1 MB of N bytes]``, N being the size of the whole diff. Credentials
    in URLs are stripped, so a diff can go to an artifact. In a repository with no commits the diff is
    taken against the empty tree (the staged files). Untracked files are listed by `untracked_files`.
    """
    root = repo_root(path)
    if root is None:
        return None
    base = _git_or_none(root, "rev-parse", "-q", "--verify", "HEAD^{commit}") or _git_or_none(
        root, "hash-object", "-t", "tree", os.devnull
    )
    if base is None:
        return None
    # Streamed so a huge diff (data files tracked by git) costs `limit` bytes of memory, not its size.
    cmd = ["git", "-C", str(root), "diff", "--no-color", "--no-ext-diff", base, "--"]
    kept = bytearray()
    total = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env()) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 16):
            total += len(chunk)
            if len(kept) <= limit:
                kept += chunk[: limit + 1 - len(kept)]
    if proc.returncode != 0 or total == 0:
        return None
    if total > limit:
        cut = kept.rfind(b"\n", 0, limit + 1)
        body = bytes(kept[: cut + 1 if cut >= 0 else limit])
        text = body.decode("utf-8", "replace") + f"[diff cut at {_limit_text(limit)} of {total} bytes]\n"
    else:
        text = bytes(kept).decode("utf-8", "replace")
    return strip_url_credentials(text)


def untracked_files(path: str | os.PathLike[str] = ".") -> list[str] | None:
    """Untracked, not ignored files of the repository holding ``path`` (relative, ``/``-separated).

    A wholly untracked folder is one entry ending in ``/``. None outside a repository.
    """
    root = repo_root(path)
    if root is None:
        return None
    out = _git_or_none(root, "ls-files", "-z", "--others", "--exclude-standard", "--directory")
    return [name for name in (out or "").split("\0") if name]


# ---- one path -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitPathState:
    """What git records for one data path."""

    repo: GitState
    path: str
    """Relative to the repository root, ``/``-separated; ``"."`` for the root itself."""
    git_sha: str | None
    """Id of the blob (file) or tree (folder) at ``HEAD``; None when ``HEAD`` does not hold the path."""
    data_dirty: bool
    """The path differs from ``HEAD``: modified, staged, deleted, untracked or ignored entries under it."""


def _relative(path: Path, root: Path) -> str | None:
    # The leaf is kept as named (a symlinked data folder is an entry of the repository), while its parents
    # are resolved, since git reports the root with symlinks resolved.
    real = Path(os.path.realpath(path)) if path.is_dir() and not path.is_symlink() else None
    if real is None:
        real = Path(os.path.realpath(path.parent)) / path.name
    try:
        rel = real.relative_to(root)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else "."


def git_path_state(path: str | os.PathLike[str]) -> GitPathState | None:
    """Git's view of ``path`` (which need not exist), or None when it is in no git repository."""
    absolute = Path(os.path.abspath(path))
    state = git_state(absolute)
    if state is None:
        return None
    rel = _relative(absolute, state.root)
    if rel is None:
        return None
    sha = None
    if state.commit:
        spec = "HEAD^{tree}" if rel == "." else f"HEAD:{rel}"
        sha = _git_or_none(state.root, "rev-parse", "-q", "--verify", spec) or None
    changes = _git_or_none(
        state.root, "status", "--porcelain", "-z", "--ignored=matching", "--untracked-files=normal", "--", rel
    )
    return GitPathState(repo=state, path=rel, git_sha=sha, data_dirty=sha is None or bool(changes))


def has_changes(root: Path, paths: list[str]) -> bool:
    """Whether any of ``paths`` (relative to ``root``) is modified, staged, untracked or not committed."""
    if not paths:
        return False
    if _git_or_none(root, "rev-parse", "-q", "--verify", "HEAD^{commit}") is None:
        return True
    status = _git_or_none(root, "status", "--porcelain", "-z", "--untracked-files=normal", "--", *paths)
    return bool(status)


# ---- fetching a recorded version -----------------------------------------------------------------------


def is_local_repo(url: str) -> bool:
    """Whether ``url`` is a plain path to a repository on this machine (not a ``file://`` URL)."""
    return "://" not in url and Path(url).is_dir()


def has_commit(repo: str | os.PathLike[str], commit: str) -> bool:
    """Whether the repository at ``repo`` (a local folder) holds ``commit``, a commit id (full or abbreviated).

    A branch or tag name does not count: it may name another commit in this clone than where it was recorded.
    """
    folder = Path(repo)
    if not folder.is_dir():
        return False
    found = _git_or_none(folder, "rev-parse", "-q", "--verify", f"{commit}^{{commit}}")
    return found is not None and found.startswith(commit.lower())


def _extract(repo: Path, commit: str, path: str, dst: Path) -> None:
    spec = f"{commit}^{{tree}}" if path == "." else f"{commit}:{path}"
    if _git_or_none(repo, "rev-parse", "-q", "--verify", spec) is None:
        if _git_or_none(repo, "rev-parse", "-q", "--verify", f"{commit}^{{commit}}") is None:
            raise SourceLoadError(f"commit {commit} is not in the repository {repo}; was it pushed?")
        raise SourceLoadError(
            f"{path} is not in commit {commit}: the run used data that was never committed, so git cannot give it back"
        )
    cmd = ["git", "-C", str(repo), "archive", "--format=tar", commit]
    if path != ".":
        cmd += ["--", path]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            # The "data" filter refuses absolute names, ".." and links leaving dst.
            archive.extractall(dst, filter="data")
        error = proc.stderr.read().decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise SourceLoadError(f"git archive of {path} at {commit} failed: {strip_url_credentials(error)}")


def export_path(url: str, commit: str, path: str, dst: Path) -> Path:
    """Write ``path`` as committed in ``commit`` of the repository at ``url`` into ``dst``; return its copy.

    A local repository path is read in place; any other URL (``file://``, ``https://``, ssh) is fetched
    into a temporary bare repository, first that commit alone (``--depth 1``), else the whole history for
    servers that refuse to serve a commit by id. The copy keeps the path's place: ``dst / path``.
    """
    if is_local_repo(url):
        _extract(Path(url), commit, path, dst)
        return dst / path
    with tempfile.TemporaryDirectory(prefix="lineage-git-") as tmp:
        bare = Path(tmp)
        _git(bare, "init", "-q", "--bare")
        try:
            _git(bare, "fetch", "-q", "--depth", "1", "--no-tags", url, commit)
        except _GitFailed:
            try:
                _git(bare, "fetch", "-q", "--no-tags", url, "+refs/*:refs/fetched/*")
            except _GitFailed as exc:
                raise SourceLoadError(f"could not fetch {url}: {exc}") from exc
        _extract(bare, commit, path, dst)
    return dst / path
