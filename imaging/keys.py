"""The master key, root of the envelope-encryption hierarchy (see ARCHITECTURE.md).

The embedded default keeps a random 256-bit key in a file under PORTAL_DATA_DIR,
created with mode 0600 by `manage.py init_master_key` (run by `make run`).
Production passes it through PORTAL_MASTER_KEY / PORTAL_MASTER_KEY_FILE or a KMS
provider. It is never generated implicitly outside that command.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MASTER_KEY_BYTES = 32


def _decode(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{source} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ImproperlyConfigured(f"{source} must decode to {MASTER_KEY_BYTES} bytes")
    return key


def master_key_file_ensure(path: Path) -> bool:
    """Create the key file (0600) if absent. Returns True when it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii"))
        handle.write("\n")
    return True


def master_key_load() -> bytes:
    """The local master key, from the environment or the key file."""
    if settings.PORTAL_MASTER_KEY:
        return _decode(settings.PORTAL_MASTER_KEY, "PORTAL_MASTER_KEY")
    path = Path(settings.PORTAL_MASTER_KEY_PATH)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"No master key: set PORTAL_MASTER_KEY or create {path} with "
            "`python manage.py init_master_key`"
        ) from None
    if path.stat().st_mode & 0o077:
        raise ImproperlyConfigured(f"{path} must not be readable by group or others (chmod 600)")
    return _decode(text, str(path))
