"""MLflow dataset sources that point at one version of data in git or DVC, and can fetch it back.

Registered through the ``mlflow.dataset_source`` entry point, so ``mlflow.data.get_source(...)`` finds them.

Raw source strings (what ``mlflow.data.dataset_source_registry.resolve_dataset_source`` accepts)::

    git+<repository url>@<commit>#<path>
    dvc+<repository url>@<git revision>#<path>

``<repository url>`` is any URL git can fetch (``https://``, ``ssh://``, ``file://``, a plain local path),
without credentials; ``<commit>`` / ``<git revision>`` is required (a full commit id when recorded by a
run; a tag or branch name without ``/`` or ``:`` also works); ``<path>`` is relative to the repository
root. The string is split at the first ``#`` and then at the last ``@`` before it, so the path may hold
any character and the URL may hold ``@`` (``git@host``).
Example: ``dvc+https://github.com/org/data.git@3f2c9e1d...#data/train``.

A source recorded by a run also keeps ``local_repo``, the working tree the run was trained in: ``load()``
reads the data from there first when that folder holds the commit (no network: a private git host or an
offline cluster does not matter), and from ``url`` only otherwise. A failure names both places tried.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mlflow.data.dataset_source import DatasetSource

from lightning_mlflow_ext.lineage import dvc as dvc_lineage
from lightning_mlflow_ext.lineage import git as git_lineage
from lightning_mlflow_ext.lineage.errors import SourceLoadError
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = ["DVCDatasetSource", "GitDatasetSource", "SourceURI", "format_source_uri", "parse_source_uri"]


class SourceURI(NamedTuple):
    kind: str
    """``git`` or ``dvc``."""
    url: str
    rev: str
    path: str


def format_source_uri(kind: str, url: str, rev: str, path: str) -> str:
    """``<kind>+<url>@<rev>#<path>``; a plain local path becomes a ``file://`` URL."""
    if "://" not in url and Path(url).is_absolute():
        url = Path(url).as_uri()
    return f"{kind}+{strip_url_credentials(url)}@{rev}#{path}"


def parse_source_uri(raw: Any, kind: str) -> SourceURI | None:
    """The parts of a ``<kind>+<url>@<rev>#<path>`` string, or None if ``raw`` is not one."""
    if not isinstance(raw, str) or not raw.startswith(f"{kind}+"):
        return None
    head, sep, path = raw[len(kind) + 1 :].partition("#")
    url, at, rev = head.rpartition("@")
    if not (sep and at and url and rev and path) or "/" in rev or ":" in rev:
        return None
    return SourceURI(kind, url, rev, path)


def _destination(dst_path: str | None, path: str) -> Path:
    dst = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="mlflow-dataset-"))
    target = dst / path
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SourceLoadError(f"{target} already exists; load into an empty dst_path so it holds only this version")
    return dst


def _clear(dst: Path, path: str) -> None:
    """Remove what a failed attempt left at ``dst / path``, so the next one starts from nothing (for the
    whole repository, ``path`` ``.``, the contents of ``dst``: the folder is the caller's)."""
    target = dst / path
    whole = os.path.normpath(path) == "." and target.is_dir()
    for entry in list(target.iterdir()) if whole else [target]:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def _fetch_first(
    url: str, local_repo: str | None, rev: str, path: str, dst: Path, fetch: Callable[[str], Path]
) -> Path:
    """``fetch(place)`` from the local repository when it holds ``rev``, else (or when that fails) from ``url``.

    When both fail, the error names both places and why each failed.
    """
    tried: list[str] = []
    if local_repo and local_repo != url:
        if git_lineage.has_commit(local_repo, rev):
            try:
                return fetch(local_repo)
            except SourceLoadError as exc:
                tried.append(f"the local repository {local_repo}: {exc}")
                _clear(dst, path)
        elif Path(local_repo).is_dir():
            tried.append(f"the local repository {local_repo}: it does not hold commit {rev}")
        else:
            tried.append(f"the local repository {local_repo}: not on this machine")
    try:
        return fetch(url)
    except SourceLoadError as exc:
        if not tried:
            raise
        tried.append(f"{url}: {exc}")
        raise SourceLoadError(
            f"Could not load {path} at {rev} from either place it can come from. Tried {'; then '.join(tried)}. "
            "Make the commit reachable in one of them (clone or fetch the repository here, or reach its remote)."
        ) from exc


class GitDatasetSource(DatasetSource):
    """A file or folder as committed in a git repository.

    ``load()`` in any process writes exactly the committed bytes into a local folder::

        source = mlflow.data.get_source(run.inputs.dataset_inputs[0])
        local_path = source.load()

    Args:
        url: Where the repository can be fetched from (credentials are stripped).
        commit: The commit holding the data.
        path: The data's path relative to the repository root.
        local_repo: The working tree the run was trained in, on the machine it ran on; read first when it
            holds ``commit``.
    """

    def __init__(self, url: str, commit: str, path: str, local_repo: str | None = None) -> None:
        self.url = strip_url_credentials(url)
        self.commit = commit
        self.path = path
        self.local_repo = local_repo

    @staticmethod
    def _get_source_type() -> str:
        return "git"

    @property
    def uri(self) -> str:
        """The raw source string, ``git+<url>@<commit>#<path>``."""
        return format_source_uri("git", self.url, self.commit, self.path)

    def load(self, dst_path: str | None = None) -> str:
        """Write the data as of ``commit`` under ``dst_path`` (a new temporary folder by default), keeping its
        path relative to the repository root; return the local path of the data. Read from ``local_repo``
        when it holds the commit, else fetched from ``url``."""
        dst = _destination(dst_path, self.path)

        def fetch(place: str) -> Path:
            return git_lineage.export_path(place, self.commit, self.path, dst)

        return str(_fetch_first(self.url, self.local_repo, self.commit, self.path, dst, fetch))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return parse_source_uri(raw_source, "git") is not None

    @classmethod
    def _resolve(cls, raw_source: Any) -> GitDatasetSource:
        parts = parse_source_uri(raw_source, "git")
        if parts is None:
            raise ValueError(f"not a git dataset source, expected git+<url>@<commit>#<path>: {raw_source!r}")
        return cls(parts.url, parts.rev, parts.path)

    def to_dict(self) -> dict[str, Any]:
        fields = {"url": self.url, "commit": self.commit, "path": self.path}
        return {**fields, "local_repo": self.local_repo} if self.local_repo else fields

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> GitDatasetSource:
        return cls(source_dict["url"], source_dict["commit"], source_dict["path"], source_dict.get("local_repo"))

    def __repr__(self) -> str:
        return f"GitDatasetSource({self.uri!r})"


class DVCDatasetSource(DatasetSource):
    """A file or folder tracked by DVC, as recorded at a git revision.

    ``load()`` fetches that version through DVC (``dvc`` must be installed: the ``[dvc]`` extra) from the
    repository's local cache or its DVC remote.

    Args:
        url: Where the git repository can be fetched from (credentials are stripped).
        rev: The git revision (a commit id when recorded by a run) whose ``.dvc`` / ``dvc.lock`` names the data.
        path: The data's path relative to the repository root.
        remote: The DVC remote to fetch from; None for the repository's default at ``rev``.
        remote_url: That remote's URL when recorded (credentials stripped); used for local-folder remotes.
        local_repo: The working tree the run was trained in, on the machine it ran on; read first (its git
            history and DVC cache, then the DVC remote) when it holds ``rev``.
    """

    def __init__(
        self,
        url: str,
        rev: str,
        path: str,
        remote: str | None = None,
        remote_url: str | None = None,
        local_repo: str | None = None,
    ) -> None:
        self.url = strip_url_credentials(url)
        self.rev = rev
        self.path = path
        self.remote = remote
        self.remote_url = strip_url_credentials(remote_url) if remote_url else None
        self.local_repo = local_repo

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    @property
    def uri(self) -> str:
        """The raw source string, ``dvc+<url>@<rev>#<path>`` (the remote is the repository's default)."""
        return format_source_uri("dvc", self.url, self.rev, self.path)

    def load(self, dst_path: str | None = None) -> str:
        """Fetch the data as of ``rev`` under ``dst_path`` (a new temporary folder by default), keeping its
        path relative to the repository root; return the local path of the data. Through ``local_repo`` when
        it holds the revision, else through a clone of ``url``."""
        dst = _destination(dst_path, self.path)

        def fetch(place: str) -> Path:
            return dvc_lineage.export_path(place, self.rev, self.path, dst, self.remote, self.remote_url)

        return str(_fetch_first(self.url, self.local_repo, self.rev, self.path, dst, fetch))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return parse_source_uri(raw_source, "dvc") is not None

    @classmethod
    def _resolve(cls, raw_source: Any) -> DVCDatasetSource:
        parts = parse_source_uri(raw_source, "dvc")
        if parts is None:
            raise ValueError(f"not a DVC dataset source, expected dvc+<url>@<rev>#<path>: {raw_source!r}")
        return cls(parts.url, parts.rev, parts.path)

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "url": self.url,
            "rev": self.rev,
            "path": self.path,
            "remote": self.remote,
            "remote_url": self.remote_url,
        }
        return {**fields, "local_repo": self.local_repo} if self.local_repo else fields

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DVCDatasetSource:
        return cls(
            source_dict["url"],
            source_dict["rev"],
            source_dict["path"],
            source_dict.get("remote"),
            source_dict.get("remote_url"),
            source_dict.get("local_repo"),
        )

    def __repr__(self) -> str:
        return f"DVCDatasetSource({self.uri!r})"


def _register_if_missed() -> None:
    """Register both sources if MLflow's entry point did not: the package runs from a source tree without
    being installed (no entry-point metadata), or loading the entry point failed inside ``import mlflow``.

    Skipped while MLflow is itself importing this module through the entry point (``mlflow.data`` not
    finished yet), which registers them.
    """
    data = sys.modules.get("mlflow.data")
    if data is None or not hasattr(data, "get_source"):
        return
    from mlflow.data.dataset_source_registry import get_registered_sources, register_dataset_source

    # MLflow annotates the registry as holding DatasetSource instances; it holds the classes.
    registered: list[Any] = list(get_registered_sources())
    for source in (GitDatasetSource, DVCDatasetSource):
        if source not in registered:
            register_dataset_source(source)  # type: ignore[arg-type]


_register_if_missed()
