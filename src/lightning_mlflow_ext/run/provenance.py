"""Which code a run records: the folder the code lives in, its git tags, and a dirty tree's diff."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from mlflow.tracking.context.git_context import GitRunContext
from mlflow.tracking.context.registry import resolve_tags

from lightning_mlflow_ext.lineage.git import code_diff, code_state, untracked_files
from lightning_mlflow_ext.run.tags import GIT_TAG_PREFIX

#: Where a dirty tree's diff against HEAD and its untracked files are recorded in the run.
CODE_DIFF_ARTIFACT = "code/diff.patch"
UNTRACKED_ARTIFACT = "code/untracked.txt"


def source_dir() -> str:
    """Where the code being run lives: the main script's folder, else (a notebook, ``python -c``, a tool
    launched from site-packages such as pytest or ipykernel) the working directory."""
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not os.path.isfile(main) or "site-packages" in main or "ipykernel" in main:
        return os.getcwd()
    return os.path.dirname(main)


def current_code_tags() -> dict[str, str]:
    """The ``mlflow.source.git.*`` tags of the code being run (git subprocesses: slow, call off the hot path)."""
    return code_state(source_dir())


def new_run_tags(tags: Mapping[str, str], code_tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` with MLflow's run context (user, source name, plugins' tags), and ``code_tags`` as the git tags.

    MLflow's git context records the remote URL as configured, credentials included, and no branch or dirty
    flag (and its first use imports GitPython, 60 ms): ours replace it. A plugin's git tags too.
    """
    ignore = [GitRunContext]  # classes, as MLflow uses them
    resolved: dict[str, str] = resolve_tags(dict(tags), ignore=ignore)  # type: ignore[arg-type]
    for key in [k for k in resolved if k.startswith(GIT_TAG_PREFIX)]:
        del resolved[key]
    resolved.update(code_tags)
    return resolved


def missing_code_tags(run_tags: Mapping[str, str]) -> dict[str, str]:
    """The git tags of the code being run that a run found elsewhere does not hold yet (its own are kept)."""
    return {key: value for key, value in current_code_tags().items() if key not in run_tags}


def code_change_files(run_tags: Mapping[str, str]) -> dict[str, str]:
    """For a run whose tags say the tree is dirty: artifact path -> text, the diff against HEAD (capped at
    1 MB) and the untracked files; empty for a clean tree, so a run records what its commit does not hold."""
    if run_tags.get(GIT_TAG_PREFIX + "dirty") != "true":
        return {}
    folder = source_dir()
    files: dict[str, str] = {}
    diff = code_diff(folder)
    if diff:
        files[CODE_DIFF_ARTIFACT] = diff
    untracked = untracked_files(folder)
    if untracked:
        files[UNTRACKED_ARTIFACT] = "\n".join(untracked) + "\n"
    return files
