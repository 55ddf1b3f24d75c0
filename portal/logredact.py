"""Logging filters that keep credentials and tag values out of log lines.

A share, invitation or password reset token in a URL is a credential: request logs
(runserver's, Django's 5xx reports) would otherwise keep it, in the path or
percent-encoded in a `next=`. A
query string's values can be a patient's name or ID (searches): they are dropped too.
pydicom quotes the value it is warning about ("Invalid value for VR DA: '19701301'"),
and that value can be a birth date or a name. Both filters rewrite the rendered message.
"""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path

_SLASH = r"(?:/|%2F)"
SHARE_TOKEN = re.compile(
    rf"({_SLASH}(?:s|portal{_SLASH}invitation|accounts{_SLASH}invitation){_SLASH})"
    r"(?!dicomweb|viewer|download|leave)[A-Za-z0-9_\-]{16,}",
    re.IGNORECASE,
)
# A password reset link's token (Django's view swaps it for a session and redirects to
# `.../set-password/`, but the first request's line still carries it).
RESET_TOKEN = re.compile(
    rf"({_SLASH}accounts{_SLASH}password-reset{_SLASH}[A-Za-z0-9_\-]+{_SLASH})"
    r"(?!set-password)[A-Za-z0-9\-]{10,}",
    re.IGNORECASE,
)
# The pages that swap a token in their URL for a session: the token is their last segment.
TOKEN_URL = re.compile(
    r"^/(?:s|portal/invitation|accounts/invitation)/(?!dicomweb$|viewer$|download$|leave$)[^/]+$"
)


def is_token_url(path: str) -> bool:
    """Whether `path` carries a link or invitation token, which must not be copied into
    a `next=` parameter (and from there into logs, history and Referer headers)."""
    return TOKEN_URL.match(path) is not None


# A URL's query string: QIDO-RS and REST searches carry PatientName, PatientID and
# birth dates there. Its names stay (they say what was searched by), its values go.
QUERY = re.compile(r"(?<=[^\s?])\?([^\s\"'#]+)")


def _query_redacted(match: re.Match[str]) -> str:
    items = match[1].split("&")
    return "?" + "&".join(
        f"{item.partition('=')[0]}=[redacted]" if "=" in item else "[redacted]" for item in items
    )


# A quoted value, as pydicom writes them: '...', "..." or b'...'.
QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def redact(text: str) -> str:
    text = RESET_TOKEN.sub(r"\1[redacted]", SHARE_TOKEN.sub(r"\1[redacted]", text))
    return QUERY.sub(_query_redacted, text)


class RedactShareTokens(logging.Filter):
    """Tokens in link paths and every query string value, in any log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class RedactQuotedValues(logging.Filter):
    """For pydicom's logger: every quoted value in a message becomes '[redacted]'."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = QUOTED.sub("'[redacted]'", message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def raised_at(exc: BaseException, *, frames: int = 3) -> str:
    """Where an exception was raised, innermost frame first: `file.py:line in function`.

    For log lines that give an error's type but not its text, which can quote a value:
    the frames say where to look, and a frame carries no value.
    """
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    return " < ".join(
        f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in reversed(stack)
    )
