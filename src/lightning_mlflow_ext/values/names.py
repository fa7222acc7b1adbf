"""MLflow names: which metric/param/tag keys MLflow accepts, and NameMapper, which maps every user key to a
valid name no other key has; MLflow's length limits and truncate_value for values."""

from __future__ import annotations

import hashlib
import posixpath
import re
import threading
from collections.abc import Container
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

__all__ = [
    "MAX_ENTITY_KEY_LENGTH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "NameMapper",
    "is_valid_name",
    "truncate_value",
    "unclaimed_name",
]

# The POSIX variant of MLflow's rule; the Windows one only differs by refusing ":", and the names we produce
# are decided by the machine that logs, so we follow the platform the tracking servers run on.
_VALID_NAME = re.compile(r"[/\w.\- :]*")
_INVALID_CHAR = re.compile(r"[^/\w.\- :]")
_SLASHES = re.compile(r"/{2,}")
_HASH_CHARS = 8


def is_valid_name(name: str) -> bool:
    """Whether MLflow accepts ``name`` as a metric, param or tag key (its POSIX rule)."""
    if not name or len(name) > MAX_ENTITY_KEY_LENGTH or "//" in name:
        return False
    if name.startswith("/") or name.endswith("/"):
        return False
    # fullmatch, not MLflow's `^...$` with re.match: `$` would let a trailing newline through.
    if _VALID_NAME.fullmatch(name) is None:
        return False
    # MLflow's `path_not_unique`: file stores use names as paths, so a name must not resolve to another one.
    norm = posixpath.normpath(name)
    return norm == name and norm != "." and not norm.startswith("..")


def _sanitize(key: str) -> str:
    """A name that satisfies every rule of `is_valid_name` except the length limit."""
    text = _INVALID_CHAR.sub("_", key)
    text = _SLASHES.sub("/", text).strip("/")
    # Dot segments are the only other thing normpath rewrites; same-length replacements keep it readable.
    segments = ["_" if seg == "." else "__" if seg == ".." else seg for seg in text.split("/")]
    text = "/".join(segments)
    if text.startswith(".."):
        # MLflow refuses any name starting with "..", not only the ".." segment (e.g. "..a" or "...").
        text = "__" + text[2:]
    return text or "_"


def _short_hash(key: str, chars: int = _HASH_CHARS) -> str:
    # sha1 rather than hash(): the name has to be the same in every process (hash() is salted per process),
    # so a resumed run or another rank logs to the same series. It is a fingerprint, not a security measure.
    data = key.encode("utf-8", "surrogatepass")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:chars]


def _with_suffix(body: str, suffix: str, limit: int | None) -> str:
    # Cutting the body cannot break validity: the suffix starts with "-", so the cut never leaves a trailing
    # "/" or a bare "." / ".." segment, and the body has no "//" or leading ".." to begin with.
    return (body if limit is None else body[: limit - len(suffix)]) + suffix


def unclaimed_name(body: str, fingerprint: str, taken: Container[str], limit: int | None = None) -> str:
    """``<body>-<first 8 hex chars of sha1(fingerprint)>``, fitted into ``limit`` characters, not in ``taken``.

    Public because hyperparameter flattening gives two leaves that spell the same key this same suffix, so a
    renamed param and a renamed metric follow one rule.
    """
    # Widen the fingerprint in the (practically impossible) case that a suffixed name is taken too, e.g. by a
    # user key that literally looks like one; still deterministic for a given order of keys.
    for chars in (_HASH_CHARS, 16, 40):
        name = _with_suffix(body, "-" + _short_hash(fingerprint, chars), limit)
        if name not in taken:
            return name
    counter = 2
    while True:
        name = _with_suffix(body, f"-{_short_hash(fingerprint, 40)}-{counter}", limit)
        if name not in taken:
            return name
        counter += 1


class NameMapper:
    """Maps user keys to valid MLflow names, stable for the life of the object.

    Rules, applied to the first call for each key (later calls return the cached result):

    * A key that is already a valid MLflow name maps to itself, unless that exact name was already handed
      out to another key; then it gets the hash suffix described below. Users see their valid keys
      unchanged in the common case, and the first key to claim a name keeps it.
    * Any other key is sanitized: invalid characters become ``_``, ``//`` collapses to ``/``, leading and
      trailing ``/`` are stripped, a ``.`` segment becomes ``_``, a ``..`` segment becomes ``__`` (as does
      a leading ``..``), and an empty result becomes ``_``.
    * If the sanitized name is longer than 250 characters or already belongs to another key, it becomes
      ``<body>-<first 8 hex chars of sha1(original key)>``, the body cut so the whole fits in 250 characters.

    Two different keys therefore never share a name, and because the suffix hashes the original key, the
    mapping is the same in every process that sees the keys in the same order. Thread-safe: the cached
    path is a plain dict lookup, the slow path holds a lock.
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._owners: dict[str, str] = {}  # name -> the key it was handed to
        self._renamed: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def renamed(self) -> dict[str, str]:
        """Original key -> new name, for every key that was changed (a snapshot copy)."""
        with self._lock:
            return dict(self._renamed)

    def map(self, key: str) -> str:
        """The MLflow name for ``key``."""
        name = self._names.get(key)
        if name is not None:
            return name
        with self._lock:
            name = self._names.get(key)
            if name is None:
                name = self._choose(key)
                self._names[key] = name
                self._owners[name] = key
                if name != key:
                    self._renamed[key] = name
            return name

    # A logger holding a mapper is pickled for ddp_spawn and by Trainer pickling; the lock is not.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _choose(self, key: str) -> str:
        if is_valid_name(key) and key not in self._owners:
            return key
        body = _sanitize(key)
        if len(body) <= MAX_ENTITY_KEY_LENGTH and body not in self._owners:
            return body
        return unclaimed_name(body, key, self._owners, MAX_ENTITY_KEY_LENGTH)


# ---- lengths ------------------------------------------------------------------------------------------


def truncate_value(text: str, limit: int = MAX_PARAM_VAL_LENGTH, note: str = "") -> tuple[str, bool]:
    """Fit ``text`` into ``limit`` characters; return the text and whether it was cut.

    A cut text ends with ``... [truncated N chars{note}]``, N being the number of characters removed. If
    even the marker does not fit in ``limit``, the text is cut hard to ``limit`` with no marker.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if len(text) <= limit:
        return text, False

    def marker(removed: int) -> str:
        return f"... [truncated {removed} chars{note}]"

    # The marker's length depends on the number of digits of N, which depends on the marker's length;
    # N only grows while iterating, so this settles within a couple of rounds.
    keep = limit - len(marker(len(text) - limit))
    while keep >= 0 and len(marker(len(text) - keep)) + keep > limit:
        keep -= 1
    if keep < 0:
        return text[:limit], True
    return text[:keep] + marker(len(text) - keep), True
