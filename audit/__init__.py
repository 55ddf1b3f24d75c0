"""The audit log. Write through `audit.record(...)`; nothing else writes events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.recorder import record as record
else:

    def record(**kwargs: Any) -> Any:
        """Append an audit event; see audit.recorder.record for the arguments."""
        # Imported lazily: this package is imported before the app registry is ready.
        from audit.recorder import record as _record

        return _record(**kwargs)
