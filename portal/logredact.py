"""Logging filters that keep credentials and tag values out of log lines.

A share or invitation token in a URL is a credential: request logs (runserver's, Django's 5xx
reports) would otherwise keep it. pydicom quotes the value it is warning about
("Invalid value for VR DA: '19701301'"), and that value can be a birth date or a name.
Both filters rewrite the rendered message.
"""

from __future__ import annotations

import logging
import re

SHARE_TOKEN = re.compile(
    r"(/s/(?!dicomweb/|viewer/|download/|leave/)|/portal/invitation/|/accounts/invitation/)"
    r"[A-Za-z0-9_\-]{16,}"
)


# A quoted value, as pydicom writes them: '...', "..." or b'...'.
QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def redact(text: str) -> str:
    return SHARE_TOKEN.sub(r"\1[redacted]", text)


class RedactShareTokens(logging.Filter):
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
