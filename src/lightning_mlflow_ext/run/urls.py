"""Credentials out of URLs, before any text reaches a run.

No MLflow import here: MLflow loads this package's dataset sources (which use it) while it is itself being
imported.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"""([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#"'<>\[\]{}|\\^`]*@""")


def strip_url_credentials(text: str) -> str:
    """Remove the ``user:password@`` or ``token@`` part of every URL in ``text``."""
    if "@" not in text:
        # Nearly every value has no "@"; skip the regex scan for them.
        return text
    return _URL_USERINFO.sub(r"\1", text)
