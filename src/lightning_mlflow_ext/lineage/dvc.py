"""What DVC records for a path: the md5 of the version in the workspace's ``.dvc`` / ``dvc.lock``, whether the
workspace still holds it, and whether the default remote has it.

``dvc`` is imported lazily: without it, only `dvc_tracking_file` (plain file checks) works.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_mlflow_ext.lineage.content import nearest_dir
from lightning_mlflow_ext.lineage.errors import DVC_INSTALL_HINT, DVCNotInstalledError, SourceLoadError
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = ["DVCPathState", "dvc_installed", "dvc_path_state", "dvc_tracking_file", "export_path"]

log = logging.getLogger(__name__)


def dvc_installed() -> bool:
    """Whether the ``dvc`` package can be imported."""
    try:
        import dvc.repo  # noqa: F401
    except ImportError:
        return False
    return True


def _repo_class() -> Any:
    try:
        from dvc.repo import Repo
    except ImportError as exc:
        raise DVCNotInstalledError(f"DVC-tracked data needs the dvc package: {DVC_INSTALL_HINT}") from exc
    return Repo


def dvc_tracking_file(path: Path, stop: Path) -> Path | None:
    """The ``.dvc`` or ``dvc.lock`` file that tracks ``path`` (or a folder holding it), looking no higher
    than ``stop``; works without ``dvc`` installed, so a missing install can be reported."""
    import yaml

    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, *absolute.parents):
        sibling = candidate.with_name(candidate.name + ".dvc")
        if candidate.name and sibling.is_file():
            return sibling
        lock = candidate / "dvc.lock"
        if candidate != absolute and lock.is_file():
            try:
                stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
            except (OSError, yaml.YAMLError):
                stages = {}
            wanted = absolute.relative_to(candidate).as_posix()
            for stage in stages.values():
                for out in stage.get("outs", []) if isinstance(stage, dict) else []:
                    out_path = str(out.get("path", "")).rstrip("/") if isinstance(out, dict) else ""
                    if out_path and (wanted == out_path or wanted.startswith(out_path + "/")):
                        return lock
        if candidate == stop or candidate == candidate.parent:
            return None
    return None


@dataclass(frozen=True)
class DVCPathState:
    """DVC's view of one data path."""

    root: Path
    """Root of the DVC repository."""
    path: str
    """Relative to `root`, ``/``-separated."""
    tracking_files: tuple[Path, ...]
    """The ``.dvc`` file, or the ``dvc.yaml`` and ``dvc.lock`` of the stage that outputs the path."""
    md5: str | None
    """md5 recorded for the path (``<md5>.dir`` for a folder), None when DVC cannot tell it."""
    size: int | None
    nfiles: int | None
    data_dirty: bool
    """The workspace differs from the recorded version (modified, deleted, never added)."""
    pushed: bool | None
    """The default remote holds every object of the recorded version; None if it was not checked."""
    remote: str | None
    remote_url: str | None
    """URL of the default remote, credentials stripped (an absolute path for a local-folder remote)."""
    problems: tuple[str, ...]


def _recorded(repo: Any, out: Any, rel: str) -> tuple[str | None, int | None, int | None]:
    if Path(out.fs_path) == Path(repo.root_dir, rel):
        nfiles = out.meta.nfiles if out.meta.isdir else 1
        return out.hash_info.value or None, out.meta.size, nfiles
    # A path inside a tracked folder: its entry in the folder's listing (loaded from the cache or remote).
    try:
        info = repo.dvcfs.info(rel)["dvc_info"]
    except Exception as exc:
        log.debug("no DVC entry for %s: %s", rel, exc)
        return None, None, None
    meta = info["entry"].meta
    return info.get("md5"), meta.size, (meta.nfiles if meta.isdir else 1)


def _remote(repo: Any) -> tuple[str | None, str | None]:
    name = repo.config["core"].get("remote")
    if not name:
        return None, None
    url = repo.config["remote"].get(name, {}).get("url")
    return name, (strip_url_credentials(str(url)) if url else None)


def _pushed(repo: Any, rel: str, remote: str) -> tuple[bool | None, str | None]:
    # An absolute target: DVC reads a relative one from the working directory, not from the repository root.
    target = os.path.join(repo.root_dir, rel)
    try:
        missing = {
            name: state
            for name, state in repo.status(targets=[target], cloud=True, remote=remote).items()
            if state in ("new", "missing")
        }
    except Exception as exc:
        return None, f"could not check DVC remote {remote!r}: {strip_url_credentials(str(exc))}"
    if not missing:
        return True, None
    count = len(missing)
    return False, f"{rel} is not pushed to DVC remote {remote!r} ({count} of its objects are not there); run `dvc push`"


def dvc_path_state(path: str | os.PathLike[str], *, check_remote: bool = True) -> DVCPathState | None:
    """DVC's view of ``path``, or None when ``path`` is in no DVC repository or no DVC output holds it.

    Raises `DVCNotInstalledError` without the ``dvc`` package. ``check_remote=False`` skips the remote
    query (``pushed`` is then None).
    """
    repo_class = _repo_class()
    from dvc.exceptions import NotDvcRepoError, OutputNotFoundError

    absolute = Path(os.path.abspath(path))
    try:
        root = Path(repo_class.find_root(str(nearest_dir(absolute))))
    except NotDvcRepoError:
        return None
    try:
        rel = Path(os.path.realpath(absolute.parent), absolute.name).relative_to(os.path.realpath(root))
    except ValueError:
        return None
    with repo_class(str(root)) as repo:
        try:
            out = repo.find_outs_by_path(str(root / rel), strict=False)[0]
        except OutputNotFoundError:
            return None
        dvcfile = Path(out.stage.dvcfile.path)
        tracking = (dvcfile, dvcfile.with_suffix(".lock")) if dvcfile.name == "dvc.yaml" else (dvcfile,)
        md5, size, nfiles = _recorded(repo, out, rel.as_posix())
        # The owning output's state: for a path inside a tracked folder, a change anywhere in it counts.
        dirty = bool(out.workspace_status())
        problems = []
        if dirty:
            problems.append(
                f"{rel.as_posix()} differs from the version in {dvcfile.name}; run `dvc add` or `dvc commit`"
            )
        remote, remote_url = _remote(repo)
        pushed: bool | None = None
        if check_remote:
            if remote is None:
                pushed = False
                problems.append("no default DVC remote is set, so no one else can fetch this data: `dvc remote add -d`")
            elif md5 is not None:
                pushed, problem = _pushed(repo, rel.as_posix(), remote)
                if problem:
                    problems.append(problem)
        return DVCPathState(
            root=root,
            path=rel.as_posix(),
            tracking_files=tracking,
            md5=md5,
            size=size,
            nfiles=nfiles,
            data_dirty=dirty,
            pushed=pushed,
            remote=remote,
            remote_url=remote_url,
            problems=tuple(problems),
        )


def export_path(
    url: str, rev: str, path: str, dst: Path, remote: str | None = None, remote_url: str | None = None
) -> Path:
    """Fetch ``path`` as recorded at ``rev`` of the git repository at ``url`` into ``dst / path`` via DVC.

    The data comes from the local cache of a local repository, else from the DVC remote: ``remote`` (the
    repository's default at ``rev`` when None). A local-folder remote is pointed at ``remote_url`` when given,
    since a relative remote path in ``.dvc/config`` means nothing inside DVC's temporary clone.
    """
    repo_class = _repo_class()
    remote_config = None
    if remote and remote_url and ("://" not in remote_url or remote_url.startswith("file://")):
        remote_config = {"url": remote_url}
    target = dst / path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        repo_class.get(url, path, out=str(target), rev=rev, remote=remote, remote_config=remote_config)
    except Exception as exc:
        raise SourceLoadError(
            f"DVC could not fetch {path} at {rev} from {url}: {strip_url_credentials(str(exc))}"
        ) from exc
    return target
