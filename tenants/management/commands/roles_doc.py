from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from tenants.roles import render_markdown


class Command(BaseCommand):
    help = "Write docs/roles.md from the permission matrix in tenants/roles.py."

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(settings.BASE_DIR) / "docs" / "roles.md"
        path.write_text(render_markdown(), encoding="utf-8")
        self.stdout.write(f"Wrote {path}")
