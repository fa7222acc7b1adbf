"""What a Lightning checkpoint file says about itself (its ``epoch`` and ``global_step``), read without loading
its tensors or running any of its code.

A checkpoint written by ``torch.save`` is a zip archive whose ``data.pkl`` holds the dict and refers to the
tensors' bytes in other members. Only that pickle is read, with every class it names replaced by an inert
stand-in: a multi-gigabyte checkpoint costs what its small pickle costs, and nothing in the file is executed.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

__all__ = ["epoch_and_step", "last_saved_file"]


def last_saved_file(callback: Any) -> str | None:
    """The file a ``ModelCheckpoint`` has just written. Lightning sets it right before it notifies the loggers
    (``after_save_checkpoint``); it has no public accessor, so it is read here, in one place."""
    path = getattr(callback, "_last_checkpoint_saved", None)
    return path if isinstance(path, str) and path else None


class _Opaque:
    """Stands for any object of the pickle: accepts whatever building it takes, keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class _Mapping(dict[Any, Any]):
    """Stands for an ``OrderedDict`` (a state dict keeps attributes on it, e.g. ``_metadata``)."""


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _Mapping
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None  # a tensor's storage: left in the archive


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def epoch_and_step(path: str | os.PathLike[str]) -> tuple[int | None, int | None]:
    """The ``epoch`` and ``global_step`` a Lightning checkpoint file records; None for what it does not tell
    (an older, non-zip format, a file that is no checkpoint)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1), None)
            if name is None:
                return None, None
            with archive.open(name) as handle:
                content = _InertUnpickler(handle).load()
    except Exception:  # whatever the file holds, the answer is "unknown", never a failed upload
        return None, None
    if not isinstance(content, dict):
        return None, None
    return _as_int(content.get("epoch")), _as_int(content.get("global_step"))
