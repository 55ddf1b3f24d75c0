from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from imaging.keys import master_key_file_ensure, master_key_load


class Command(BaseCommand):
    help = "Create the local master key file (mode 0600) if it does not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PORTAL_MASTER_KEY:
            master_key_load()
            self.stdout.write("Master key comes from PORTAL_MASTER_KEY; no file needed.")
            return
        path = Path(settings.PORTAL_MASTER_KEY_PATH)
        if master_key_file_ensure(path):
            self.stdout.write(
                self.style.WARNING(
                    f"Created master key file {path} (mode 0600). Back it up separately "
                    "from the data: without it, stored images cannot be decrypted."
                )
            )
        else:
            master_key_load()
            self.stdout.write(f"Master key file {path} present.")
