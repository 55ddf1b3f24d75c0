"""The audit chain's HMAC key: random, stored only wrapped by the key provider.

Someone who can write the database but does not hold the master key (or KMS access)
cannot recompute the chain after editing a row.
"""

from __future__ import annotations

import secrets
from functools import partial

from django.db import IntegrityError, transaction

from audit.models import AuditEvent, AuditKey

CONTEXT = b"audit-chain-key|v1"
_cached: bytes | None = None


class AuditKeyMissing(RuntimeError):
    """Events exist but the key that chains them does not: restore it, do not replace it."""


def _remember(key: bytes) -> None:
    global _cached
    _cached = key


def audit_key() -> bytes:
    if _cached is not None:
        return _cached
    from imaging.keys import key_provider

    row = AuditKey.objects.filter(version=1).first()
    if row is None:
        # A fresh key over existing events would start every chain again and hide what
        # was done before: a deleted key row is a break to restore from backup.
        if AuditEvent.objects.unscoped(reason="is the audit log empty?").exists():
            raise AuditKeyMissing(
                "The audit chain's key is missing while audit events exist; restore the "
                "audit key row from a backup."
            )
        if _checkpoints_exist():
            # Checkpoints (outside the database) saw events this key chained: an emptied
            # log under a new key would make them all fail to verify, then be outgrown.
            raise AuditKeyMissing(
                "The audit chain's key is missing while audit checkpoints exist (the log "
                "was emptied?); restore the audit key row and the events from a backup."
            )
        try:
            with transaction.atomic():
                row = AuditKey.objects.create(
                    version=1,
                    wrapped_key=key_provider().wrap(secrets.token_bytes(32), context=CONTEXT),
                )
        except IntegrityError:
            row = AuditKey.objects.get(version=1)
    key = key_provider().unwrap(bytes(row.wrapped_key), context=CONTEXT)
    # Kept once the row is known to be committed: a key made in a transaction that rolls
    # back exists nowhere, and events chained with it could never be verified.
    transaction.on_commit(partial(_remember, key))
    return key


def _checkpoints_exist() -> bool:
    from audit.checkpoints import checkpointed_chain_keys

    return bool(checkpointed_chain_keys())


def audit_key_forget() -> None:
    global _cached
    _cached = None
