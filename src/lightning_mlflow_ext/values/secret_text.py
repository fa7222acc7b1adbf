"""Secrets out of free text (an exception's message, a traceback, a process's output) before it reaches a run.

Text has no keys of its own: a secret is found where the text assigns one (``password=...``, ``"api_key": "..."``,
``Authorization: Bearer ...``, by the same `Redactor` as hyperparameters), in a URL's credentials, or as the
value of an environment variable whose name is a secret (``MLFLOW_TRACKING_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lightning_mlflow_ext.values.redaction import DEFAULT_REDACTOR, REDACTED, Redactor
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = ["TextRedactor", "secret_values"]

# key, then "=" or ":" (the key may close a quote: "password": ...), then a value: quoted, or up to what ends a
# word in code, JSON, a URL query or a command line. An HTTP auth scheme word goes with the credential after it.
# A key starts a word and every part is bounded: the text can be long (a process's output), and an unbounded part
# would be scanned again from every character of a long word (quadratic time).
_ASSIGNMENT = re.compile(
    r"""(?<!\w)(?P<key>[A-Za-z_][\w.\-]{0,99})(?P<sep>["']?[ \t]{0,8}[:=][ \t]{0,8})"""
    r"""(?P<value>(?:(?:Bearer|Basic|Token|Digest) {1,8})?"""
    r"""(?:"[^"\n]{0,4000}"|'[^'\n]{0,4000}'|[^\s"',;&)}\]]{1,4000}))"""
)
# A credential after an auth scheme anywhere ("... -H 'Authorization: Bearer abc'", a printed header dict).
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic)[ \t]{1,8}(?P<value>[A-Za-z0-9._~+/=\-]{8,})")
#: Variables whose names spell a secret word, and are not secrets: the shell's working directories ("pwd").
NOT_SECRET_VARIABLES = frozenset({"PWD", "OLDPWD"})
#: A secret's value shorter than this is not looked for in text ("1", "yes" would hide every occurrence).
MIN_SECRET_LENGTH = 6


def secret_values(environ: Mapping[str, str], redactor: Redactor | None = None) -> list[str]:
    """The values of the variables in ``environ`` whose names are secrets by ``redactor`` (but
    `NOT_SECRET_VARIABLES`)."""
    redactor = redactor or DEFAULT_REDACTOR
    found = {
        value
        for name, value in environ.items()
        if len(value) >= MIN_SECRET_LENGTH and name not in NOT_SECRET_VARIABLES and redactor.is_secret(name)
    }
    return sorted(found)


class TextRedactor:
    """Hides secrets in text: known secret values, values assigned to secret keys, URL credentials, auth headers.

    Example::

        hide = TextRedactor(Redactor.of(), secret_values(os.environ))
        hide("connecting with password=hunter2 to https://me:pw@host")
        # 'connecting with password=[redacted] to https://host'
    """

    def __init__(self, redactor: Redactor | None = None, secrets: Iterable[str] = ()) -> None:
        self._redactor = redactor or DEFAULT_REDACTOR
        known = [value for value in secrets if len(value) >= MIN_SECRET_LENGTH]
        # Longest first: a secret that contains another is hidden whole.
        self._known = re.compile("|".join(map(re.escape, sorted(known, key=len, reverse=True)))) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        text = _ASSIGNMENT.sub(self._assignment, text)
        text = _AUTH_SCHEME.sub(lambda match: f"{match['scheme']} {REDACTED}", text)
        return strip_url_credentials(text)

    def _assignment(self, match: re.Match[str]) -> str:
        if not self._redactor.is_secret(match["key"]):
            return match[0]
        value = match["value"]
        quote = value[-1] if value[-1:] in ("'", '"') and value[:1] == value[-1:] else ""
        return f"{match['key']}{match['sep']}{quote}{REDACTED}{quote}"
