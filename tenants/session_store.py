"""Database sessions (SESSION_ENGINE), refusing a cookie no session key can be."""

from __future__ import annotations

import re

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

# What Django makes (32 of a-z0-9) and what its table holds (40 at most).
_SESSION_KEY = re.compile(r"[a-z0-9]{8,40}")


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key: str | None) -> bool:
        # Django checks only the length, so a cookie holding a NUL reached the query,
        # and PostgreSQL refuses such text with an error rather than finding no row.
        return bool(key) and _SESSION_KEY.fullmatch(key) is not None
