"""Canonical encoding and hash of an audit event. No ORM here."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

HASH_VERSION = 2


def canonical_bytes(
    *,
    chain_key: str,
    seq: int,
    tenant_id: str,
    created_at: datetime,
    actor_type: str,
    actor_id: str,
    actor_ip: str | None,
    action: str,
    target_type: str,
    target_id: str,
    outcome: str,
    detail: dict[str, Any],
    prev_hash: str,
) -> bytes:
    payload = {
        "v": HASH_VERSION,
        "chain": chain_key,
        "seq": seq,
        "tenant": tenant_id,
        "at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": [actor_type, actor_id, actor_ip or ""],
        "action": action,
        "target": [target_type, target_id],
        "outcome": outcome,
        "detail": detail,
        "prev": prev_hash,
    }
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def event_hash(*, key: bytes, **fields: Any) -> str:
    """HMAC-SHA256 under the audit key: without the key (held by the key provider, not
    the database), an edited row cannot be re-chained to look intact."""
    return hmac.new(key, canonical_bytes(**fields), hashlib.sha256).hexdigest()
