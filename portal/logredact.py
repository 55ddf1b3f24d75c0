"""A logging filter that removes share-link tokens from every log line.

A share token in a URL is a credential: request logs (runserver's, Django's 5xx
reports) would otherwise keep it. The filter rewrites the rendered message.
"""

from __future__ import annotations

import logging
import re

SHARE_TOKEN = re.compile(r"(/s/)(?!dicomweb/|viewer/|download/|leave/)[A-Za-z0-9_\-]{16,}")


def redact(text: str) -> str:
    return SHARE_TOKEN.sub(r"\1[redacted]", text)


class RedactShareTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True
