"""MLflow names and values: sanitizing metric/param/tag keys, flattening and rendering hyperparameters,
redacting secrets."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import logging
import posixpath
import re
import sys
import threading
import types
from argparse import Namespace
from collections.abc import Container, Iterable, Mapping
from pathlib import PurePath
from typing import Any, TypeAlias

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from lightning_mlflow_ext.run.urls import strip_url_credentials

__all__ = [
    "DEFAULT_REDACTOR",
    "MAX_ENTITY_KEY_LENGTH",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "REDACTED",
    "NameMapper",
    "RedactPatterns",
    "Redactor",
    "flatten_hparams",
    "is_secret_key",
    "is_valid_name",
    "redact_secrets",
    "render_hparams",
    "render_value",
    "strip_url_credentials",
    "truncate_value",
]

log = logging.getLogger(__name__)

REDACTED = "[redacted]"

# The POSIX variant of MLflow's rule; the Windows one only differs by refusing ":", and the names we produce
# are decided by the machine that logs, so we follow the platform the tracking servers run on.
_VALID_NAME = re.compile(r"[/\w.\- :]*")
_INVALID_CHAR = re.compile(r"[^/\w.\- :]")
_SLASHES = re.compile(r"/{2,}")
_HASH_CHARS = 8


# ---- names ------------------------------------------------------------------------------------------


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


def _unclaimed(body: str, fingerprint: str, taken: Container[str], limit: int | None = None) -> str:
    """``<body>-<first 8 hex chars of sha1(fingerprint)>``, fitted into ``limit`` characters, not in ``taken``."""
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
        return _unclaimed(body, key, self._owners, MAX_ENTITY_KEY_LENGTH)


# ---- flattening ---------------------------------------------------------------------------------------


def _omegaconf() -> Any | None:
    # Looking in sys.modules instead of importing: if omegaconf was never imported, no object can be one of
    # its configs, and importing it here would cost every user that does not use it.
    return sys.modules.get("omegaconf")


def _is_dictconfig(value: Any) -> bool:
    oc = _omegaconf()
    return oc is not None and isinstance(value, oc.DictConfig)


def _is_listconfig(value: Any) -> bool:
    oc = _omegaconf()
    return oc is not None and isinstance(value, oc.ListConfig)


def _resolution_errors() -> tuple[type[BaseException], ...]:
    oc = _omegaconf()
    assert oc is not None  # only called with an OmegaConf object in hand
    # "???" values reached through an interpolation or direct access raise MissingMandatoryValue.
    return (oc.errors.InterpolationResolutionError, oc.errors.MissingMandatoryValue)


def _listconfig_to_list(cfg: Any) -> list[Any]:
    oc = _omegaconf()
    assert oc is not None
    try:
        result = oc.OmegaConf.to_container(cfg, resolve=True)
    except _resolution_errors():
        result = oc.OmegaConf.to_container(cfg, resolve=False)
    return list(result)


def _dictconfig_to_dict(cfg: Any) -> dict[Any, Any]:
    oc = _omegaconf()
    assert oc is not None
    try:
        result = oc.OmegaConf.to_container(cfg, resolve=True)
        return dict(result) if result is not None else {}
    except _resolution_errors():
        pass
    # One broken interpolation (a missing env var, an unregistered resolver) should not cost the resolved
    # values of every other key, so fall back to resolve=False node by node rather than for the whole config.
    raw = oc.OmegaConf.to_container(cfg, resolve=False)
    if raw is None:
        return {}
    out: dict[Any, Any] = {}
    for key, raw_value in raw.items():
        try:
            value = cfg[key]
        except _resolution_errors():
            out[key] = raw_value
            continue
        if isinstance(value, oc.DictConfig):
            out[key] = _dictconfig_to_dict(value)
        elif isinstance(value, oc.ListConfig):
            out[key] = _listconfig_to_list(value)
        else:
            out[key] = value
    return out


def _as_mapping(value: Any) -> Mapping[Any, Any] | None:
    """The key/value view of a container that flattening descends into, or None for a plain value."""
    # DictConfig is itself a Mapping, so it must be converted before the generic Mapping check.
    if _is_dictconfig(value):
        return _dictconfig_to_dict(value)
    if isinstance(value, Mapping):
        return value
    if isinstance(value, Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Shallow on purpose: dataclasses.asdict deep-copies every value (tensors, modules) and recurses
        # into lists, which flattening must leave as values.
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return None


def _key_fingerprint(path: tuple[Any, ...]) -> str:
    # Tells apart paths that join to the same text: ("a/b",) from ("a", "b"), the int 1 from the string "1".
    return "\x00".join(f"{type(part).__qualname__}:{part}" for part in path)


# A collision is reported once per flat key and process: hyperparameters are often logged again on resume.
_reported_collisions: set[str] = set()


def _add_leaf(out: dict[str, Any], key: str, path: tuple[Any, ...], value: Any) -> None:
    if key not in out:
        out[key] = value
        return
    # Two leaves spell the same flat key ({"a/b": 1, "a": {"b": 2}}, or the keys 1 and "1"): the first keeps
    # it, the later one gets a hash suffix, as NameMapper does for names, so neither value is lost.
    name = _unclaimed(key, _key_fingerprint(path), out)
    out[name] = value
    if key not in _reported_collisions:
        _reported_collisions.add(key)
        log.warning(
            "Two hyperparameters flatten to the same name %r; the later one (path %s) is recorded as %r. "
            "Rename one of them to keep both under names of your choosing.",
            key,
            list(path),
            name,
        )


def _flatten_into(
    out: dict[str, Any],
    prefix: str | None,
    path: tuple[Any, ...],
    params: Mapping[Any, Any],
    separator: str,
    active: set[int],
) -> None:
    for raw_key, value in params.items():
        # prefix is None only at the top: an empty key nested below it still adds a level ({"": {"b": 1}} -> "/b").
        key = str(raw_key) if prefix is None else f"{prefix}{separator}{raw_key}"
        here = (*path, raw_key)
        # A container that holds itself (directly or further down) stays a value; rendering shows the cycle as "...".
        nested = None if id(value) in active else _as_mapping(value)
        if nested is not None:
            active.add(id(value))
            try:
                _flatten_into(out, key, here, nested, separator, active)
            finally:
                active.discard(id(value))
        elif _is_listconfig(value):
            _add_leaf(out, key, here, _listconfig_to_list(value))
        else:
            _add_leaf(out, key, here, value)


def flatten_hparams(params: Any, separator: str = "/") -> dict[str, Any]:
    """Flatten nested hyperparameters into ``{"a/b": value}``.

    Mappings (including Lightning's ``AttributeDict``), ``argparse.Namespace``, dataclass instances and
    OmegaConf ``DictConfig`` are descended into; lists and tuples are values (a ``ListConfig`` becomes a
    list). Keys are converted with ``str()``; an empty nested mapping produces no keys; a container that
    holds itself is a value where it recurs.

    Every leaf gets a key of its own. When two leaves spell the same key (a flat ``"a/b"`` beside a nested
    ``{"a": {"b": ...}}``, or the keys ``1`` and ``"1"``), the first keeps it and the later one gets a suffix,
    ``<key>-<first 8 hex chars of sha1 of its path>``, with a warning.
    """
    if params is None:
        return {}
    top = _as_mapping(params)
    if top is None:
        raise TypeError(
            "flatten_hparams expects a mapping, an argparse.Namespace, a dataclass instance, an OmegaConf "
            f"DictConfig or None; got {type(params).__module__}.{type(params).__qualname__}"
        )
    out: dict[str, Any] = {}
    _flatten_into(out, None, (), top, separator, {id(params)})
    return out


# ---- rendering ----------------------------------------------------------------------------------------

_ROUTINE_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    # Bound builtin methods such as `[].append` have no module; their qualname ("list.append") says enough.
    return f"{module}.{qualname}" if isinstance(module, str) and module else str(qualname)


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class _Rendering:
    """One rendering: the containers being rendered (a container met again inside itself is a cycle) and,
    for hyperparameters, the redactor that hides what a value holds under a secret key."""

    __slots__ = ("active", "redactor")

    def __init__(self, redactor: Redactor | None) -> None:
        self.active: set[int] = set()
        self.redactor = redactor

    def entry(self, path: str | None, key: str, value: Any) -> str:
        """The text of ``value``, held under ``key`` in the value at ``path``; `REDACTED` if that names a secret."""
        inner = key if path is None else f"{path}/{key}"
        if self.redactor is not None and self.redactor.is_secret(inner):
            return REDACTED
        return _render(value, self, inner)


def _render_sequence(items: Any, open_: str, close: str, rendering: _Rendering, path: str | None) -> str:
    return open_ + ", ".join(rendering.entry(path, str(i), item) for i, item in enumerate(items)) + close


def _render_container(value: Any, rendering: _Rendering, path: str | None) -> str | None:
    """Render the containers whose parts are rendered recursively; None if ``value`` is not one."""
    if isinstance(value, Mapping):
        pairs = ((_render(k, rendering, path), v) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {rendering.entry(path, k, v)}" for k, v in pairs) + "}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        # A namedtuple's field names are most of its meaning; its repr is stable, so keep that shape.
        named = zip(value._fields, value, strict=True)
        parts = ", ".join(f"{name}={rendering.entry(path, name, item)}" for name, item in named)
        return f"{type(value).__qualname__}({parts})"
    if isinstance(value, tuple):
        # Python's one-tuple spelling, so "(1,)" is not mistaken for a parenthesized scalar.
        if len(value) == 1:
            return f"({rendering.entry(path, '0', value[0])},)"
        return _render_sequence(value, "(", ")", rendering, path)
    if isinstance(value, list):
        return _render_sequence(value, "[", "]", rendering, path)
    if isinstance(value, (set, frozenset)):
        if not value:
            # "{}" would read as an empty dict.
            return f"{type(value).__name__}()"
        # Set iteration order depends on string hashing, which is salted per process; sorting makes it stable.
        return "{" + ", ".join(sorted(_render(item, rendering, path) for item in value)) + "}"
    if isinstance(value, Namespace):
        parts = ", ".join(f"{k}={rendering.entry(path, k, v)}" for k, v in vars(value).items())
        return f"Namespace({parts})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Not repr(): a field holding a function or plain object would put a memory address in it. Fields
        # declared repr=False stay out, as in the dataclass's own repr (often used to hide large values).
        fields = [f for f in dataclasses.fields(value) if f.repr]
        parts = ", ".join(f"{f.name}={rendering.entry(path, f.name, getattr(value, f.name))}" for f in fields)
        return f"{type(value).__qualname__}({parts})"
    return None


def _render_array_like(value: Any, rendering: _Rendering, path: str | None) -> str | None:
    """numpy and torch values, recognized through sys.modules so neither gets imported here."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.generic, np.ndarray)):
        if isinstance(value, np.generic) or value.ndim == 0:
            return _render(value.item(), rendering, path)
        return _render(value.tolist(), rendering, path)
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, (torch.dtype, torch.device)):
            return str(value)
        if isinstance(value, torch.Tensor):
            try:
                return _render(value.item() if value.dim() == 0 else value.tolist(), rendering, path)
            except (RuntimeError, NotImplementedError, ValueError):
                # Meta or otherwise data-less tensors; their repr describes them without an address.
                return repr(value)
    return None


def _render(value: Any, rendering: _Rendering, path: str | None) -> str:
    # Order matters: Enum before str/int (StrEnum, IntEnum), bool before int, DictConfig before Mapping.
    if value is None:
        return "None"
    if isinstance(value, enum.Enum):
        if value.name is not None:
            return f"{type(value).__name__}.{value.name}"
        return repr(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        # int.__repr__ so int subclasses with a custom __str__ still render as the number.
        return int.__repr__(value)
    if isinstance(value, float):
        # repr is the shortest text that round-trips; float() drops subclasses such as numpy.float64,
        # whose repr in numpy 2 is "np.float64(0.1)".
        return repr(float(value))
    array_text = _render_array_like(value, rendering, path)
    if array_text is not None:
        return array_text
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, functools.partial):
        args = [_render(arg, rendering, path) for arg in value.args]
        args += [f"{k}={rendering.entry(path, k, v)}" for k, v in value.keywords.items()]
        return f"functools.partial({', '.join([_render(value.func, rendering, path), *args])})"
    if isinstance(value, (type, *_ROUTINE_TYPES)):
        return _qualified_name(value)
    if _is_dictconfig(value):
        value = _dictconfig_to_dict(value)
    elif _is_listconfig(value):
        value = _listconfig_to_list(value)

    active = rendering.active
    if id(value) in active:
        # A container that holds itself; Python's repr uses the same "..." placeholder.
        return "..."
    active.add(id(value))
    try:
        container_text = _render_container(value, rendering, path)
    finally:
        active.discard(id(value))
    if container_text is not None:
        return container_text

    try:
        text = repr(value)
    except Exception:
        return f"<{_class_name(value)}>"
    if " at 0x" in text:
        # A memory address differs on every run, which would make MLflow see a changed param on resume.
        qualname = getattr(value, "__qualname__", None)
        if callable(value) and isinstance(qualname, str):
            # Function-likes outside the standard types (Cython functions, for one) still have a name.
            return _qualified_name(value)
        return f"<{_class_name(value)}>"
    return text


def render_value(value: Any) -> str:
    """Render ``value`` as text that is the same in every process (never a memory address)."""
    return _render(value, _Rendering(None), None)


def render_hparams(params: Any, redactor: Redactor | None = None) -> dict[str, str]:
    """Flatten, render and redact hyperparameters, ready to be logged as MLflow params.

    A key that names a secret (by ``redactor``, default the built-in words of `Redactor`) has its value
    replaced by `REDACTED`, and so has everything a value holds under such a key, at any depth (a list of
    dicts, a dataclass, a ``functools.partial``'s keywords), judged by its whole path (``servers/0/password``).
    Credentials in URLs are stripped from the other values.
    """
    if redactor is None:
        redactor = DEFAULT_REDACTOR
    rendering = _Rendering(redactor)
    return {
        key: REDACTED if redactor.is_secret(key) else strip_url_credentials(_render(value, rendering, key))
        for key, value in flatten_hparams(params).items()
    }


# ---- secrets ------------------------------------------------------------------------------------------

# Each entry is matched as whole segments of a key (see `Redactor`); "api_key" also covers "apikey" and "APIKey".
_BUILT_IN_SECRETS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "credential",
    "credentials",
    "authorization",
    "bearer",
    "api_key",
    "api_keys",
    "access_key",
    "access_keys",
    "secret_key",
    "secret_keys",
    "private_key",
    "private_keys",
    "auth_token",
    "auth_tokens",
    "client_secret",
    "account_key",
    "encryption_key",
    "master_key",
    "session_key",
    "signing_key",
    "ssh_key",
    "connection_string",
)
# Every non-word character separates segments (":" and "@" as much as "/" or "-"), and so does "_".
_SEPARATORS = re.compile(r"[\W_]+")
# camelCase ("apiKey"), acronym then word ("HFToken"), and letter/digit ("password2") boundaries.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
# What makes a `redact=` entry a regular expression rather than words; "." "-" "_" "/" separate words.
_REGEX_CHARS = frozenset("^$*+?()[]{}|\\")

# Real objects rather than strings: LightningCLI (jsonargparse) and typing.get_type_hints evaluate them.
RedactPattern: TypeAlias = str | re.Pattern[str]
RedactPatterns: TypeAlias = RedactPattern | Iterable[RedactPattern]
"""What ``redact=`` takes: one word or regular expression, or several (see `Redactor`)."""


def _parts(key: str) -> list[str]:
    """The key split on separators only, lowercased: "pAsSwOrD" stays one word, "passWord" is "password"."""
    return [part.lower() for part in _SEPARATORS.split(key) if part]


def _segments(key: str) -> list[str]:
    """The key split on separators and on camelCase and letter/digit boundaries, lowercased."""
    words: list[str] = []
    for part in _SEPARATORS.split(key):
        if part:
            words.extend(word.lower() for word in _CAMEL_BOUNDARY.split(part) if word)
    return words


def _phrases(text: str) -> set[tuple[str, ...]]:
    """The segment sequences that spell ``text`` in a key: split either way, or written as one word."""
    spellings = {tuple(_segments(text)), tuple(_parts(text))}
    spellings.add(("".join(_segments(text)),))
    return {spelling for spelling in spellings if spelling and spelling != ("",)}


def _contains(segments: list[str], phrases: frozenset[tuple[str, ...]], lengths: frozenset[int]) -> bool:
    for length in lengths:
        for start in range(len(segments) - length + 1):
            if tuple(segments[start : start + length]) in phrases:
                return True
    return False


class Redactor:
    """Which hyperparameter and tag keys name secrets, whose values are recorded as `REDACTED`.

    Example::

        redactor = Redactor.of(["wandb_key", r"^internal/"])
        redactor.is_secret("logging/WandbKey")   # True: the words wandb, key
        redactor.is_secret("internal/db_host")   # True: the regular expression
        redactor.is_secret("hf.token")           # True: built in
        redactor.is_secret("max_tokens")         # False

    A key is split into segments on every non-alphanumeric character and on ``_``, then lowercased; it is
    also split on camelCase and letter/digit boundaries. It names a secret when consecutive segments spell
    one of the words: the built-in ones (``password``, ``passwd``, ``pwd``, ``passphrase``, ``secret``,
    ``secrets``, ``token``, ``credential(s)``, ``authorization``, ``bearer``, ``api_key(s)``,
    ``access_key(s)``, ``secret_key(s)``, ``private_key(s)``, ``auth_token(s)``, ``client_secret``,
    ``account_key``, ``encryption_key``, ``master_key``, ``session_key``, ``signing_key``, ``ssh_key``,
    ``connection_string``) and the user's. A word of several segments matches however the key separates or
    joins them: ``api_key`` matches ``wandb.api_key``, ``API-KEY``, ``apiKey`` and ``apikey``. Whole segments
    only, so ``tokenizer``, ``max_tokens`` and ``secretary`` are not secret, while ``token_dim`` is: a false
    positive only hides a value, a miss leaks one.

    Args (of `Redactor.of`), ``redact``: the user's patterns, on top of the built-in words; one or a list:

    * a string with none of ``^ $ * + ? ( ) [ ] { } | \\`` is a word, matched as above (``"wandb_key"``,
      ``"hf.org_token"``, ``"ssn"``);
    * any other string, or a compiled ``re.Pattern``, is a regular expression searched in the whole key,
      as the run shows it before any renaming (``"a/b"`` for ``{"a": {"b": ...}}``): ``r"^internal/"``
      hides everything under ``internal``, ``r"(?i)salt$"`` every key ending in salt in any case. Matching is
      case-sensitive unless the pattern says ``(?i)``. To match a character such as ``$`` literally, escape
      it (``re.escape``).

    Inside a hyperparameter's value (a list of dicts, a dataclass), an entry is judged by its path: the key,
    then ``/`` and the entry's key or list index (``servers/0/password``).
    """

    # A plain class rather than a dataclass: keys.py must load on its own (see the tests), and a value object
    # this small needs no more than this.
    __slots__ = ("_lengths", "patterns", "phrases")

    def __init__(self, phrases: frozenset[tuple[str, ...]], patterns: tuple[re.Pattern[str], ...] = ()) -> None:
        self.phrases = phrases
        """Segment sequences that name a secret, lowercased: ``("api", "key")``, ``("apikey",)``."""
        self.patterns = patterns
        """Regular expressions searched in the whole key."""
        self._lengths = frozenset(len(phrase) for phrase in phrases)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Redactor):
            return NotImplemented
        return (self.phrases, self.patterns) == (other.phrases, other.patterns)

    def __hash__(self) -> int:
        return hash((self.phrases, self.patterns))

    def __repr__(self) -> str:
        extra = sorted("_".join(phrase) for phrase in self.phrases - DEFAULT_REDACTOR.phrases)
        return f"Redactor(words=built-in + {extra}, patterns={[p.pattern for p in self.patterns]})"

    @classmethod
    def of(cls, redact: RedactPatterns | None = None) -> Redactor:
        """The built-in words plus ``redact`` (see the class doc). ValueError names a pattern that cannot work."""
        if redact is None:
            return DEFAULT_REDACTOR
        items: list[Any] = [redact] if isinstance(redact, (str, re.Pattern)) else list(redact)
        phrases = set(DEFAULT_REDACTOR.phrases)
        patterns: list[re.Pattern[str]] = []
        for item in items:
            if isinstance(item, re.Pattern):
                if not isinstance(item.pattern, str):
                    raise TypeError(f"redact pattern {item.pattern!r} is a bytes pattern; keys are text, use a str")
                patterns.append(item)
            elif not isinstance(item, str):
                raise TypeError(
                    f"redact entries must be strings (words or regular expressions) or compiled re.Pattern objects; "
                    f"got {type(item).__qualname__}: {item!r}"
                )
            elif _REGEX_CHARS.intersection(item):
                patterns.append(_compile(item))
            else:
                spelled = _phrases(item)
                if not spelled:
                    raise ValueError(
                        f"redact pattern {item!r} has no letters or digits, so it matches no key; give a word "
                        "such as 'wandb_key', or a regular expression such as r'^internal/'"
                    )
                phrases |= spelled
        return cls(frozenset(phrases), tuple(patterns))

    def is_secret(self, key: str) -> bool:
        """Whether the value under ``key`` must be redacted."""
        if self.patterns and any(pattern.search(key) for pattern in self.patterns):
            return True
        phrases, lengths = self.phrases, self._lengths
        return _contains(_segments(key), phrases, lengths) or _contains(_parts(key), phrases, lengths)

    def redact(self, params: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``params`` with the value of every secret key replaced by `REDACTED`."""
        return {key: REDACTED if self.is_secret(key) else value for key, value in params.items()}


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"redact pattern {pattern!r} is not a valid regular expression ({exc}). Fix the expression, or, to "
            f"match its characters literally, pass re.escape({pattern!r})."
        ) from exc


DEFAULT_REDACTOR = Redactor(frozenset(phrase for word in _BUILT_IN_SECRETS for phrase in _phrases(word)))
"""The built-in words alone: what every function here uses when given no redactor."""


def is_secret_key(key: str, redactor: Redactor | None = None) -> bool:
    """Whether a hyperparameter or tag key names a secret, by ``redactor`` (default: the built-in words).

    See `Redactor` for the rule: whole segments of the key, so ``db_password`` and ``hf/token`` are secret,
    ``max_tokens`` and ``tokenizer`` are not.
    """
    return (redactor or DEFAULT_REDACTOR).is_secret(key)


def redact_secrets(params: Mapping[str, str], redactor: Redactor | None = None) -> dict[str, str]:
    """A copy of ``params`` with the value of every secret key (by ``redactor``) replaced by `REDACTED`."""
    return (redactor or DEFAULT_REDACTOR).redact(params)


# scheme "://" userinfo "@". The userinfo stops at what ends an authority ("/", "?", "#") and at whitespace,
# quotes and brackets, so in rendered text such as "{'a': 'https://host', 'b': 'x@y'}" the match cannot run
# from one value into the next. "@" is allowed inside and matching is greedy, so a raw "@" in a password
# ("user:p@ss@host") is stripped up to the last "@". scp-like "git@host:repo" has no "://" and is left alone.
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
