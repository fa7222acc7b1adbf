"""File sizes as a user writes them (``"500MB"``, ``"1.5 GiB"``, ``10_000``) and as a message shows them.

Decimal units are powers of 1000 (``MB``), binary ones powers of 1024 (``MiB``), as disk tools print them.
"""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Bytes of ``value``: an int of bytes, or a number with a unit (``"500MB"``, ``"2GiB"``, ``"100 kb"``).

    Raises ValueError, naming ``what``, for a negative size, an unknown unit or text that is no size.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what} must be a number of bytes or a text like '500MB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return value
    match = _SIZE.fullmatch(value)
    if match is None or match.group(2).lower() not in _UNITS:
        if value.strip().startswith("-"):
            raise ValueError(f"{what} must not be negative, got {value!r}")
        raise ValueError(
            f"{what}={value!r} is not a size: write bytes as an int, or a number and a unit, e.g. '500MB' or "
            f"'2GiB' (units: {', '.join(u for u in _UNITS if u)}, any case)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: int) -> str:
    """``1234567`` -> ``"1.2 MB"``: decimal units, as the size limits are usually written."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
