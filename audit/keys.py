"""The audit chain's HMAC key: random, stored only wrapped by the key provider.

Someone who can write the database but does not hold the master key (or KMS access)
cannot recompute the chain after editing a row.
"""

from __future__ import annotations

import secrets

from django.db import IntegrityError, transaction

from audit.models import AuditKey

CONTEXT = b"audit-chain-key|v1"
_cached: bytes | None = None


def audit_key() -> bytes:
    global _cached
    if _cached is None:
        from imaging.keys import key_provider

        row = AuditKey.objects.filter(version=1).first()
        if row is None:
            try:
                with transaction.atomic():
                    row = AuditKey.objects.create(
                        version=1,
                        wrapped_key=key_provider().wrap(secrets.token_bytes(32), context=CONTEXT),
                    )
            except IntegrityError:
                row = AuditKey.objects.get(version=1)
        _cached = key_provider().unwrap(bytes(row.wrapped_key), context=CONTEXT)
    return _cached


def audit_key_forget() -> None:
    global _cached
    _cached = None
