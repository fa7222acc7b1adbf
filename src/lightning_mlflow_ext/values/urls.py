"""Credentials out of URLs, before any text reaches a run.

No MLflow import here: MLflow loads this package's dataset sources (which use it) while it is itself being
imported.
"""

from __future__ import annotations

import re

__all__ = ["strip_url_credentials"]

# scheme "://" userinfo "@". The userinfo stops at what ends an authority ("/", "?", "#") and at whitespace,
# quotes and brackets, so in rendered text such as "{'a': 'https://host', 'b': 'x@y'}" the match cannot run
# from one value into the next. "@" is allowed inside and matching is greedy, so a raw "@" in a password
# ("user:p@ss@host") is stripped up to the last "@". scp-like "git@host:repo" has no "://" and is left alone.
# A scheme has at most 32 characters: unbounded, each letter of a long word in a long text (a process's output)
# would start a scan to its end (quadratic time).
_URL_USERINFO = re.compile(r"""([A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^\s/?#"'<>\[\]{}|\\^`]*@""")


def strip_url_credentials(text: str) -> str:
    """Remove the ``user:password@`` or ``token@`` part of every URL in ``text``."""
    if "@" not in text:
        # Nearly every value has no "@"; skip the regex scan for them.
        return text
    return _URL_USERINFO.sub(r"\1", text)
