"""Figures, images, tables, texts and dicts turned into what a run stores, on the caller's thread.

Rendering is done right away (so the caller may change or close the object); uploading is not.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from typing import Any

from lightning_mlflow_ext.errors import InvalidArtifactPathError

# Letters, digits and the punctuation file names commonly carry (checkpoint names use "=").
_SAFE = re.compile(r"[\w.\-=+@, ]+")


def artifact_path(name: str, *, what: str = "artifact") -> str:
    """``name`` if it is a safe relative artifact path; else a clear error (never a silent rewrite)."""
    problem = None
    if not name or not name.strip():
        problem = "it is empty"
    elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        problem = "it is an absolute path"
    elif "\\" in name:
        problem = "it contains a backslash"
    elif any(part in ("..", ".") for part in name.split("/")):
        problem = "it contains a '.' or '..' segment"
    elif "//" in name or name.endswith("/"):
        problem = "it has an empty segment"
    elif not all(_SAFE.fullmatch(part) for part in name.split("/")):
        problem = "it has characters outside letters, digits, spaces and . - _ = + @ ,"
    if problem:
        raise InvalidArtifactPathError(
            f"The {what} name {name!r} is refused: {problem}. Use a relative path like 'plots/confusion.png'."
        )
    return posixpath.normpath(name)


def figure_bytes(figure: Any, *, close: bool = True) -> tuple[bytes, str]:
    """PNG bytes of a matplotlib figure or HTML of a plotly one, and the file suffix.

    A matplotlib figure made through pyplot is closed afterwards (``close=True``): pyplot keeps every
    figure it made alive, and a figure logged every epoch would otherwise leak.
    """
    module = type(figure).__module__
    if module.startswith("plotly"):
        return figure.to_html(full_html=True, include_plotlyjs="cdn").encode(), ".html"
    if hasattr(figure, "savefig"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)
        return buffer.getvalue(), ".png"
    raise TypeError(f"log_figure takes a matplotlib or plotly figure, got {type(figure).__qualname__}")


def image_array(image: Any) -> Any:
    """A numpy array (HxW, HxWxC) or PIL image MLflow can store; torch tensors (CxHxW or HxW) converted."""
    if type(image).__module__.startswith("torch"):
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CxHxW -> HxWxC
        return array
    if hasattr(image, "copy"):
        return image.copy()  # the caller may reuse its buffer before the upload runs
    return image


def dict_text(data: Any, artifact_file: str) -> str:
    if artifact_file.endswith((".yaml", ".yml")):
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False))
    return json.dumps(data, indent=2, default=str)


TABLE_SUFFIXES = (".json", ".parquet")


class Tables:
    """The tables ``log_table`` wrote, as MLflow's ``log_table`` keeps them: a table logged again to the same
    file is appended to it (rows), and the run's ``mlflow.loggedArtifacts`` tag lists every table file, which is
    what MLflow's UI looks for to show a table."""

    def __init__(self, logged_artifacts_tag: str | None = None) -> None:
        try:
            listed = json.loads(logged_artifacts_tag or "[]")
        except ValueError:
            listed = []
        self._listed: list[dict[str, str]] = [item for item in listed if isinstance(item, dict)]
        self._frames: dict[str, Any] = {}

    def add(self, data: Any, artifact_file: str) -> tuple[Any, str | None]:
        """The whole table ``artifact_file`` now holds (a DataFrame of its own, safe to write on another thread),
        and the new value of the ``mlflow.loggedArtifacts`` tag (None: unchanged)."""
        import pandas as pd

        if not artifact_file.endswith(TABLE_SUFFIXES):
            raise ValueError(f"table {artifact_file!r}: MLflow's tables are .json or .parquet files")
        frame = pd.DataFrame(data).copy(deep=True)
        before = self._frames.get(artifact_file)
        if before is not None:
            frame = pd.concat([before, frame], ignore_index=True)
        self._frames[artifact_file] = frame
        entry = {"path": artifact_file, "type": "table"}
        if entry in self._listed:
            return frame, None
        self._listed.append(entry)
        return frame, json.dumps(self._listed)


def write_table(frame: Any, path: str) -> None:
    """As MLflow's ``log_table`` writes a table: JSON in pandas' split orientation, or Parquet."""
    if path.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="split", index=False, date_format="iso")
