"""The fingerprint of one data path: which repository, commit and content version a run read.

Combines git's and DVC's views; the digest comes from the content, so the same bytes give the same digest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_mlflow_ext.lineage.content import dvc_md5, git_object_sha, size_and_count
from lightning_mlflow_ext.lineage.dvc import DVCPathState, dvc_installed, dvc_path_state, dvc_tracking_file
from lightning_mlflow_ext.lineage.errors import DVC_INSTALL_HINT, DataPathNotFoundError
from lightning_mlflow_ext.lineage.git import GitPathState, git_path_state, has_changes
from lightning_mlflow_ext.values.urls import strip_url_credentials
from lightning_mlflow_ext.warn_once import WarnOnce

__all__ = ["DIGEST_LENGTH", "Fingerprint", "fingerprint"]

log = logging.getLogger(__name__)

DIGEST_LENGTH = 36
"""MLflow's limit on a dataset digest."""

_warn_once = WarnOnce(log)


@dataclass(frozen=True)
class Fingerprint:
    """Which version of a data path a run read, and whether anyone else can get that version back.

    ``size``, ``nfiles`` and `digest` describe the bytes on disk; ``dvc_md5`` and ``git_sha`` are what the
    repository records at ``commit``. When the data is clean they describe the same version.
    """

    path: str
    """Relative to the repository root (``/``-separated); absolute outside any repository."""
    repo_url: str | None
    """The git remote's URL, credentials stripped; None without a remote."""
    commit: str | None
    branch: str | None
    tracker: Literal["dvc", "git"] | None
    """What versions the data: DVC, git, or nothing (untracked, or outside any repository)."""
    dvc_md5: str | None
    git_sha: str | None
    size: int
    nfiles: int
    code_dirty: bool | None
    """Tracked files of the repository differ from ``commit``; None outside a repository."""
    data_dirty: bool | None
    """The data differs from what ``commit`` records (modified, untracked, ``.dvc`` file not committed);
    None when it cannot be told (outside a repository, DVC data without ``dvc`` installed)."""
    pushed: bool | None
    """The DVC remote holds the recorded version; None when the data is not DVC's or it was not checked."""
    content_hash: str
    """``md5:<dvc md5>``, or ``git:<object id>`` (git's blob/tree id, ``git-sha256:`` in sha256 repos)."""
    repo_root: str | None = None
    """Local working-tree root (git's, else DVC's)."""
    dvc_remote: str | None = None
    dvc_remote_url: str | None = None
    problems: tuple[str, ...] = ()
    """Why this version may not be reproducible, one sentence each; empty when all is well."""

    @property
    def digest(self) -> str:
        """At most 36 characters from the content hash: a DVC md5 as DVC writes it (``<md5>[.dir]``), else
        ``git:`` and the first 32 hex digits of the git object id."""
        kind, _, value = self.content_hash.partition(":")
        if kind == "md5":
            return value
        return self.content_hash[:DIGEST_LENGTH]

    @property
    def reproducible(self) -> bool:
        """Clean data and code at a commit, and for DVC data, pushed to the remote."""
        return (
            self.commit is not None
            and self.tracker is not None
            and self.data_dirty is False
            and self.code_dirty is False
            and (self.tracker != "dvc" or self.pushed is True)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``digest``."""
        fields = dataclasses.asdict(self)
        fields["problems"] = list(self.problems)
        fields["digest"] = self.digest
        return fields


def _git_prefix(algorithm: str) -> str:
    return "git" if algorithm == "sha1" else f"git-{algorithm}"


def _git_hash(path: Path, git: GitPathState | None) -> str:
    algorithm = git.repo.object_format if git else "sha1"
    return f"{_git_prefix(algorithm)}:{git_object_sha(path, algorithm)}"


def _dvc_fingerprint(absolute: Path, git: GitPathState | None, state: DVCPathState) -> Fingerprint:
    problems = list(state.problems)
    exists = absolute.exists()
    if state.md5 and not state.data_dirty:
        content, size, nfiles = f"md5:{state.md5}", state.size, state.nfiles
    elif exists:
        content = f"md5:{dvc_md5(absolute)}"
        size, nfiles = size_and_count(absolute)
    elif state.md5:
        content, size, nfiles = f"md5:{state.md5}", state.size, state.nfiles
    else:
        raise DataPathNotFoundError(f"{absolute} is not on disk and DVC records no version of it")
    if size is None or nfiles is None:
        size, nfiles = size_and_count(absolute) if exists else (0, 0)
    data_dirty = state.data_dirty
    if git is not None:
        tracking = [os.path.relpath(file, git.repo.root) for file in state.tracking_files if file.exists()]
        if has_changes(git.repo.root, tracking):
            data_dirty = True
            problems.append(
                f"{', '.join(tracking)} is not committed, so commit {git.repo.commit} does not record this "
                "data version; commit it"
            )
        path = _relative_to(absolute, git.repo.root)
    else:
        problems.append(f"{state.root} is not a git repository, so no commit records the .dvc files")
        path = state.path
    return Fingerprint(
        path=path,
        repo_url=git.repo.repo_url if git else None,
        commit=git.repo.commit if git else None,
        branch=git.repo.branch if git else None,
        tracker="dvc",
        dvc_md5=state.md5,
        git_sha=None,
        size=size,
        nfiles=nfiles,
        code_dirty=git.repo.dirty if git else None,
        data_dirty=data_dirty,
        pushed=state.pushed,
        content_hash=content,
        repo_root=str(git.repo.root if git else state.root),
        dvc_remote=state.remote,
        dvc_remote_url=state.remote_url,
        problems=tuple(problems),
    )


def _relative_to(absolute: Path, root: Path) -> str:
    rel = Path(os.path.realpath(absolute.parent), absolute.name).relative_to(root)
    return rel.as_posix() or "."


def fingerprint(path: str | os.PathLike[str], *, check_remote: bool = True) -> Fingerprint:
    """The fingerprint of the file or folder at ``path``.

    Never fails for lack of lineage: outside any repository, or for untracked data, the fingerprint says so
    in ``tracker``, the dirty flags and ``problems``. ``check_remote=False`` skips asking the DVC remote
    whether it holds the data (``pushed`` is then None). DVC data without ``dvc`` installed (or that DVC
    fails to read) is reported in ``problems``, with a hint to install the ``[dvc]`` extra, and fingerprinted
    from the bytes on disk with the md5 DVC would record.

    Raises:
        DataPathNotFoundError: ``path`` does not exist and DVC records no version of it.
    """
    absolute = Path(os.path.abspath(path))
    git = git_path_state(absolute)
    if git is not None and git.path == ".":
        absolute = git.repo.root
    dvc_trouble = None
    if dvc_installed():
        try:
            state = dvc_path_state(absolute, check_remote=check_remote)
        except Exception as exc:  # a broken .dvc file or DVC bug must not stop a training: report it instead
            dvc_trouble = f"DVC failed to read it ({type(exc).__name__}: {strip_url_credentials(str(exc))})"
        else:
            if state is not None:
                return _dvc_fingerprint(absolute, git, state)
    else:
        dvc_trouble = f"dvc is not installed: {DVC_INSTALL_HINT}"
    dvc_file = None
    if dvc_trouble is not None:
        dvc_file = dvc_tracking_file(absolute, git.repo.root if git else Path(absolute.anchor))
    if not (absolute.exists() or absolute.is_symlink()):
        raise DataPathNotFoundError(f"{path} does not exist")
    size, nfiles = size_and_count(absolute)
    problems: list[str] = []
    if git is None:
        problems.append(f"{absolute} is in no git repository: no lineage is recorded for it")
        return Fingerprint(
            path=str(absolute), repo_url=None, commit=None, branch=None, tracker=None, dvc_md5=None,
            git_sha=None, size=size, nfiles=nfiles, code_dirty=None, data_dirty=None, pushed=None,
            content_hash=_git_hash(absolute, None), problems=tuple(problems),
        )  # fmt: skip
    if dvc_file is not None:
        problem = f"{git.path} is tracked by DVC ({dvc_file.name}) but {dvc_trouble}; recording git information only"
        _warn_once(problem, problem)
        problems.append(problem)
        tracker: Literal["dvc", "git"] | None = "dvc"
        data_dirty: bool | None = None
        content = f"md5:{dvc_md5(absolute)}"  # what DVC records for these bytes, so the digest matches
    elif git.git_sha is None:
        problems.append(f"{git.path} is not committed to git (untracked or ignored): no commit holds this data")
        tracker, data_dirty, content = None, True, _git_hash(absolute, git)
    else:
        tracker, data_dirty = "git", git.data_dirty
        if data_dirty:
            problems.append(f"{git.path} has uncommitted changes, so commit {git.repo.commit} does not hold them")
            content = _git_hash(absolute, git)
        else:
            content = f"{_git_prefix(git.repo.object_format)}:{git.git_sha}"
    if git.repo.commit is None:
        problems.append(f"the repository at {git.repo.root} has no commits yet")
    return Fingerprint(
        path=git.path,
        repo_url=git.repo.repo_url,
        commit=git.repo.commit,
        branch=git.repo.branch,
        tracker=tracker,
        dvc_md5=None,
        git_sha=git.git_sha,
        size=size,
        nfiles=nfiles,
        code_dirty=git.repo.dirty,
        data_dirty=data_dirty,
        pushed=None,
        content_hash=content,
        repo_root=str(git.repo.root),
        problems=tuple(problems),
    )
