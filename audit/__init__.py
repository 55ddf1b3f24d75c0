"""The audit log. Write through `audit.record(...)`; nothing else writes events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.recorder import Entry as Entry
    from audit.recorder import record as record
    from audit.recorder import record_for_user as record_for_user
    from audit.recorder import record_many as record_many
else:
    # Imported lazily: this package is imported before the app registry is ready.

    def record(**kwargs: Any) -> Any:
        """Append an audit event; see audit.recorder.record for the arguments."""
        from audit.recorder import record as _record

        return _record(**kwargs)

    def record_many(**kwargs: Any) -> Any:
        """Append several events by one actor with one chain lock; see audit.recorder."""
        from audit.recorder import record_many as _record_many

        return _record_many(**kwargs)

    def __getattr__(name: str) -> Any:
        if name == "Entry":
            from audit.recorder import Entry

            return Entry
        raise AttributeError(name)

    def record_for_user(**kwargs: Any) -> Any:
        """Record an event about a person in each of their clinics."""
        from audit.recorder import record_for_user as _record_for_user

        return _record_for_user(**kwargs)
