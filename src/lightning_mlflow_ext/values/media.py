"""Figures, images, tables, texts and dicts turned into what a run stores, on the caller's thread.

Rendering is done right away (so the caller may change or close the object); uploading is not.
"""

from __future__ import annotations

import copy
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


def table_copy(data: Any) -> Any:
    return data.copy() if hasattr(data, "copy") and not isinstance(data, dict) else copy.deepcopy(data)
