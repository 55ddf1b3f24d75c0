from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from audit.checkpoints import checkpoints_write


class Command(BaseCommand):
    help = (
        "Write a checkpoint of every audit chain whose head moved, outside the database "
        "(Celery beat does this every AUDIT_CHECKPOINT_INTERVAL_SECONDS)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        written = checkpoints_write(now=timezone.now())
        self.stdout.write(f"checkpoints written: {written}")
