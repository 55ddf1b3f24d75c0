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
from typing import Any

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
# birth dates there. Its names stay (they say what was searched by), its values go. It
# runs to the next space or quoting double quote: a value may hold a ' (O'Brien), which
# curl sends as it is.
QUERY = re.compile(r"(?<=[^\s?])\?([^\s\"#]+)")


def _query_redacted(match: re.Match[str]) -> str:
    items = match[1].split("&")
    return "?" + "&".join(
        f"{item.partition('=')[0]}=[redacted]" if "=" in item else "[redacted]" for item in items
    )


# What pydicom quotes ('...', "..." or b'...'), from a message's first quote of either
# kind to its last, or to its end: a value may itself hold quotes (O'Brien, escaped or
# not), which no pairing of quotes tells from its ends. Text between two values goes
# with them; a diagnostic line loses little by that.
QUOTED = re.compile(r"b?['\"].*['\"]|b?['\"].*", re.DOTALL)


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


class RedactingFormatter(logging.Formatter):
    """Every handler's last word: the whole rendered record through `redact`, and a
    traceback's exceptions by type, without their messages.

    Filters see the message only; a traceback is rendered later, by the formatter, and
    its messages can quote a value: a unique key's DETAIL (a patient ID, an email
    address), a tag value pydicom could not read, a URL with its query. The frames stay,
    to say where to look; a frame carries no value.
    """

    def formatException(self, ei: Any) -> str:
        blocks, seen, exc = [], set(), ei[1]
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            frames = "".join(traceback.format_tb(exc.__traceback__))
            name = f"{type(exc).__module__}.{type(exc).__qualname__}"
            blocks.append(
                f"Traceback (most recent call last):\n{frames}{name} (message not logged)"
            )
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        return "\n\nRaised while handling:\n".join(blocks)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactQuotedValues(logging.Filter):
    """For pydicom's logger: whatever a message quotes becomes '[redacted]'."""

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
