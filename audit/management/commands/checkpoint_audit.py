from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.checkpoints import checkpoints_write


class Command(BaseCommand):
    help = (
        "Write a checkpoint of every audit chain whose head moved, outside the database "
        "(Celery beat does this every AUDIT_CHECKPOINT_INTERVAL_SECONDS)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        run = checkpoints_write(now=timezone.now())
        self.stdout.write(f"checkpoints written: {run.written}")
        if run.refused:
            # A monitor running this must see it fail: events are missing or replaced.
            raise CommandError(
                "audit chains no longer matching their checkpoint, not checkpointed again "
                f"(run verify_audit): {', '.join(run.refused)}"
            )
