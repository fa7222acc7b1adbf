"""Hyperparameters and the run's own tags (``tags=``, data lineage), rendered as MLflow text.

MLflow params are write-once: a value that differs from the one the run holds is not an error that stops the
fit; it is recorded in the changed-params tag. A value too long for a param is cut, and the full set goes to
the artifact ``hparams.json``.
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_mlflow_ext.run.tags import (
    CHANGED_PARAMS_TAG,
    LINEAGE_CHANGED_TAG,
    LINEAGE_PROBLEMS_TAG,
    LINEAGE_TAG,
    MAX_TAG_VALUE,
)
from lightning_mlflow_ext.values.hparams import render_hparams, render_value
from lightning_mlflow_ext.values.names import NameMapper, truncate_value
from lightning_mlflow_ext.values.redaction import Redactor, redact_secrets
from lightning_mlflow_ext.values.urls import strip_url_credentials

if TYPE_CHECKING:
    from lightning_mlflow_ext.run.session import RunSession
    from lightning_mlflow_ext.warn_once import WarnOnce

HPARAMS_ARTIFACT = "hparams.json"


def run_tags(tags: Mapping[str, Any] | None, redactor: Redactor) -> dict[str, str]:
    """The user's ``tags=`` as MLflow tags: valid names, text values within MLflow's limit, secrets redacted."""
    names = NameMapper()
    return redact_secrets(
        {
            names.map(str(key)): truncate_value(strip_url_credentials(render_value(value)), MAX_TAG_VALUE)[0]
            for key, value in (tags or {}).items()
        },
        redactor,
    )


def lineage_tags(state: str, problems: list[str]) -> dict[str, str]:
    """``lightning_mlflow_ext.lineage`` = reproducible | incomplete, and what is missing."""
    tags = {LINEAGE_TAG: state}
    if problems:
        tags[LINEAGE_PROBLEMS_TAG] = truncate_value("; ".join(problems), MAX_TAG_VALUE)[0]
    return tags


def changed_data_tags(changed: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """A fit resumed from a checkpoint trained on other data: split -> [then, now]."""
    text = json.dumps({split: list(pair) for split, pair in changed.items()}, sort_keys=True)
    return {LINEAGE_CHANGED_TAG: truncate_value(text, MAX_TAG_VALUE)[0]}


class HyperparamRecorder:
    """Sends each hyperparameter once, and keeps the values that changed since in one tag."""

    def __init__(self, session: RunSession, warn_once: WarnOnce, redactor: Redactor) -> None:
        self._session = session
        self._warn_once = warn_once
        self._redactor = redactor
        self._param_names = NameMapper()
        self._changed_params: dict[str, str] = {}

    def log(self, params: Mapping[str, Any] | Namespace | Any, *, keep_existing: bool = False) -> None:
        """``keep_existing``: a param the run already holds keeps its value, silently (names another tool also
        records, where the user's own hyperparameter of that name comes first)."""
        rendered = render_hparams(params, self._redactor)
        if not rendered:
            return
        logged = self._session.logged_params()
        new: dict[str, str] = {}
        changed: dict[str, str] = {}
        truncated: list[str] = []
        for key, text in rendered.items():
            name = self._param_names.map(key)
            value, cut = truncate_value(text, note=f", full value in {HPARAMS_ARTIFACT}")
            if cut:
                truncated.append(name)
            if name not in logged:
                new[name] = value
            elif logged[name] != value:
                changed[name] = value
        self._session.log_params(new)
        if changed and not keep_existing:
            self._record_changed_params(changed)
        if truncated:
            self._warn_once(
                "truncated:" + ",".join(truncated),
                f"Hyperparameters {truncated} are longer than MLflow's 6000-character limit; the params hold "
                f"their start and the full values are in the artifact {HPARAMS_ARTIFACT}.",
            )
            # In the background like every other artifact: the training thread never waits on an upload.
            self._session.uploader.upload_text(json.dumps(rendered, indent=2, sort_keys=True), HPARAMS_ARTIFACT)

    def _record_changed_params(self, changed: dict[str, str]) -> None:
        # MLflow params are write-once. The first value stays; the new ones are kept in a tag, and the fit goes on.
        self._changed_params.update(changed)
        text = json.dumps(self._changed_params, sort_keys=True)
        self._session.set_tags({CHANGED_PARAMS_TAG: truncate_value(text, MAX_TAG_VALUE)[0]})
        self._warn_once(
            "changed:" + ",".join(sorted(changed)),
            f"Hyperparameters {sorted(changed)} differ from the values this run already holds; MLflow keeps the "
            f"first value of a param, so the new values are recorded in the tag {CHANGED_PARAMS_TAG!r}.",
        )

    def forget_run(self) -> None:
        """The changed params of a run this logger no longer writes into."""
        self._changed_params = {}
