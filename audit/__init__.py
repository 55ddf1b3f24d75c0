"""The audit log. Write through `audit.record(...)`; nothing else writes events."""

from __future__ import annotations

from typing import Any


def record(**kwargs: Any) -> Any:
    """Append an audit event; see audit.recorder.record for the arguments."""
    from audit.recorder import record as _record

    return _record(**kwargs)
