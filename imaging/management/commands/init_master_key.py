from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from imaging.crypto import IntegrityError
from imaging.keyring import wrapped_keys_check, wrapped_keys_exist
from imaging.keys import LocalKeyProvider, master_key_file_ensure, master_key_load


class Command(BaseCommand):
    help = (
        "Create the local master key file (mode 0600) if it does not exist, and check that "
        "the key unwraps the keys the database holds. Refuses to make a new key while the "
        "database holds keys wrapped by another: restore that one instead."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        provider = getattr(settings, "PORTAL_KEY_PROVIDER", "local")
        if provider != "local":
            self.stdout.write(
                f"PORTAL_KEY_PROVIDER is {provider!r}: the keys are wrapped there, and no "
                "local master key file is needed."
            )
            return
        try:
            self._ensure()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(
                f"The database could not be read to check the master key against the keys "
                f"it holds ({type(exc).__name__}); nothing was created."
            ) from None

    def _ensure(self) -> None:
        if settings.PORTAL_MASTER_KEY:
            self._check(master_key_load(), source="PORTAL_MASTER_KEY")
            self.stdout.write("Master key comes from PORTAL_MASTER_KEY; no file needed.")
            return
        path = Path(settings.PORTAL_MASTER_KEY_PATH)
        if not path.exists() and wrapped_keys_exist():
            # A new key would unwrap none of them: every image, and the audit log's key,
            # would be lost. A key file that is missing is restored, never replaced.
            raise CommandError(
                f"No master key file at {path}, but the database holds keys wrapped by a "
                "master key. Restore that key file from its backup (or point "
                "PORTAL_MASTER_KEY_FILE at it); a new key could decrypt nothing stored. "
                "Nothing was created."
            )
        created = master_key_file_ensure(path)
        self._check(master_key_load(), source=str(path))
        if created:
            self.stdout.write(
                self.style.WARNING(
                    f"Created master key file {path} (mode 0600). Back it up separately "
                    "from the data: without it, stored images cannot be decrypted."
                )
            )
        else:
            self.stdout.write(f"Master key file {path} present.")

    @staticmethod
    def _check(key: bytes, *, source: str) -> None:
        try:
            wrapped_keys_check(LocalKeyProvider(key))
        except IntegrityError:
            raise CommandError(
                f"The master key from {source} does not unwrap the keys the database holds: "
                "it is not the key they were wrapped with. Restore the right key from its "
                "backup."
            ) from None
