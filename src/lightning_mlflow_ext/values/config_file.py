"""A LightningCLI config as it may be recorded: the secrets the logger keeps out of params removed.

Used for the config ``MLflowSaveConfigCallback`` records, and for the file Lightning's own ``SaveConfigCallback``
wrote, which ``MLflowLogger`` records in the run.
"""

from __future__ import annotations

import itertools
from typing import Any

import yaml

from lightning_mlflow_ext.values.redaction import REDACTED, Redactor, is_secret_key
from lightning_mlflow_ext.values.urls import strip_url_credentials


def redact_config(value: Any, path: str, redactor: Redactor) -> Any:
    """``value`` with the secrets the logger keeps out of params (secret-looking keys by its ``redactor``,
    credentials in URLs) removed, lists included: a list is one param, so its items are not otherwise looked
    into."""
    if isinstance(value, dict):
        return {
            key: redact_config(item, f"{path}/{key}" if path else str(key), redactor) for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_config(item, f"{path}/{index}", redactor) for index, item in enumerate(value)]
    if path and is_secret_key(path, redactor):
        return REDACTED
    if isinstance(value, str):
        return strip_url_credentials(value)
    return value


def redacted_yaml(text: str, redactor: Redactor) -> tuple[str, dict[str, Any]]:
    """The YAML ``text`` and its values as a dict, both with the secrets removed. Unchanged text (comments and
    all) when there is nothing to remove; else the leading comment lines, then the clean values."""
    loaded = yaml.safe_load(text)
    data: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    clean = redact_config(data, "", redactor)
    if clean != data:
        comments = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
        header = "".join(line + "\n" for line in comments)
        text = header + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text, clean
