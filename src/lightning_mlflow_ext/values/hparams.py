"""Hyperparameters as MLflow params: flattening nested containers (OmegaConf configs included) into
``a/b`` keys, and rendering values as text that is the same in every process, secrets redacted."""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import sys
import types
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from lightning_mlflow_ext.values.names import unclaimed_name
from lightning_mlflow_ext.values.redaction import DEFAULT_REDACTOR, REDACTED, Redactor
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = ["flatten_hparams", "render_hparams", "render_value"]

log = logging.getLogger(__name__)

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
    name = unclaimed_name(key, _key_fingerprint(path), out)
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
