"""Secrets in hyperparameters and tags: Redactor (the built-in secret words plus the user's ``redact=``
patterns), is_secret_key and redact_secrets, whose values are recorded as REDACTED."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

__all__ = [
    "DEFAULT_REDACTOR",
    "REDACTED",
    "RedactPattern",
    "RedactPatterns",
    "Redactor",
    "is_secret_key",
    "redact_secrets",
]

REDACTED = "[redacted]"

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

    # A plain class rather than a dataclass: redaction.py must load on its own (see the tests), and a value object
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
