"""Secrets kept out of what people see: logs, errors, `tether config show`."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

# Query parameters that carry credentials: passwords, tokens, keys, signatures (SAS), Azure
# Functions' `code`, credentials and sessions.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|sig|auth|code|sas|cred|session", re.IGNORECASE)


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """`url` fit for a log: its password (with `keep_user=False`, all its userinfo) and its
    secret-looking query values replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that could not be parsed, not shown)"
    out = url  # edited in place: unsplitting would turn sqlite:////abs/path into sqlite://abs/path
    if "@" in parts.netloc:
        userinfo, _, where = parts.netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@{where}" if colon and keep_user else f"***@{where}"  # a lone userinfo may be a token
        out = out.replace(parts.netloc, shown, 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(k) for k, _ in query):
        hidden = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in query], safe="*")
        out = out.replace("?" + parts.query, "?" + hidden, 1)
    return out
