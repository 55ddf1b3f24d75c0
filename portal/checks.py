"""System checks for settings that would weaken the portal's guarantees."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

PLAINTEXT_UPLOAD_HANDLER = "django.core.files.uploadhandler.TemporaryFileUploadHandler"


@register()
def check_upload_handlers(app_configs: Any, **kwargs: Any) -> list[Error]:
    if PLAINTEXT_UPLOAD_HANDLER in settings.FILE_UPLOAD_HANDLERS:
        return [
            Error(
                "TemporaryFileUploadHandler writes uploads to disk in plaintext.",
                hint="Remove it from FILE_UPLOAD_HANDLERS; PHI never touches disk unencrypted.",
                id="portal.E001",
            )
        ]
    return []
