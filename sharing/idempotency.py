"""A partner's share request made safe to retry: the Idempotency-Key header.

A client whose `POST /api/v1/shares` timed out cannot tell whether the link was made. A
retry without a key makes a second live link (and emails its recipient twice); a retry
under the same key within `SHARE_REQUEST_HOURS` gets the first link back, its URL
included. The key is the partner's, per token: two tokens never meet on one key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.crypto import unwrap_key, wrap_key
from imaging.keyring import study_dek
from imaging.models import Study
from sharing.models import ShareLink, ShareRequest
from sharing.services import share_create, study_confidential_locked, token_live_locked
from tenants.models import ApiToken, Tenant

SHARE_REQUEST_HOURS = 24
KEY_MAX_LENGTH = 255


class IdempotencyKeyReused(Exception):
    """The key was given with a different request: a client's bug, not a retry."""


@dataclass(frozen=True)
class ShareCreated:
    share: ShareLink
    token: str
    replayed: bool


def _request_mac(*, key: bytes, values: dict[str, object]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, b"share-request-v1|" + text.encode(), hashlib.sha256).hexdigest()


def _context(row_id: uuid.UUID, tenant_id: object) -> bytes:
    return b"share-request|" + str(tenant_id).encode() + b"|" + str(row_id).encode()


@transaction.atomic
def partner_share_create(
    *,
    idempotency_key: str | None,
    study: Study,
    created_by_token: ApiToken,
    actor: Actor,
    now: dt.datetime,
    expires_at: dt.datetime,
    pin: str | None,
    max_uses: int | None,
    allow_download: bool,
    deidentify: bool,
    recipient_email: str,
    message: str,
) -> ShareCreated:
    """`share_create` for a partner's token; once per `idempotency_key` when one is given.

    The same key with the same request returns the link it made (`replayed`), audited as
    the link shown again; with another request it raises `IdempotencyKeyReused`. The
    study's row and then the token's are locked first, in `share_create`'s order, so a
    retry sent while the first request is still under way waits for it and replays it.
    """
    tenant = study.tenant
    request: dict[str, Any] = {
        "expires_at": expires_at,
        "pin": pin,
        "max_uses": max_uses,
        "allow_download": allow_download,
        "deidentify": deidentify,
        "recipient_email": recipient_email,
        "message": message,
    }
    made = {"study": study, "created_by_token": created_by_token, "actor": actor, "now": now}
    if idempotency_key is None:
        share, token = _created(**made, **request)
        return ShareCreated(share=share, token=token, replayed=False)
    values = {**request, "study": str(study.pk), "expires_at": expires_at.isoformat()}
    key_sha256 = hashlib.sha256(idempotency_key.encode()).hexdigest()
    study_confidential_locked(study)
    token_live_locked(created_by_token, now=now)
    earlier = (
        ShareRequest.objects.for_tenant(tenant)
        .select_related("share__study__tenant")
        .filter(api_token=created_by_token, key_sha256=key_sha256)
        .first()
    )
    if earlier is not None and earlier.created_at <= now - dt.timedelta(hours=SHARE_REQUEST_HOURS):
        earlier.delete()  # the periodic purge has not reached it yet
        earlier = None
    if earlier is not None:
        return _replayed(earlier, values=values, actor=actor, tenant=tenant)
    share, token = _created(**made, **request)
    dek = study_dek(study=study)
    row_id = uuid.uuid4()
    ShareRequest.objects.create(
        id=row_id,
        tenant=tenant,
        api_token=created_by_token,
        key_sha256=key_sha256,
        request_mac=_request_mac(key=dek, values=values),
        share=share,
        token_wrapped=wrap_key(kek=dek, key=token.encode(), context=_context(row_id, tenant.pk)),
        created_at=now,
    )
    return ShareCreated(share=share, token=token, replayed=False)


def _created(*, pin: str | None, **options: Any) -> tuple[ShareLink, str]:
    # A partner's link asks for a PIN when it gives one, and for nothing otherwise.
    challenge = ShareLink.Challenge.PIN if pin else ShareLink.Challenge.NONE
    return share_create(challenge=challenge, pin=pin, **options)


def _replayed(
    earlier: ShareRequest, *, values: dict[str, object], actor: Actor, tenant: Tenant
) -> ShareCreated:
    share = earlier.share
    dek = study_dek(study=share.study)
    if not hmac.compare_digest(earlier.request_mac, _request_mac(key=dek, values=values)):
        raise IdempotencyKeyReused(
            f"This Idempotency-Key was sent with a different request in the last "
            f"{SHARE_REQUEST_HOURS} hours. Send a new key for a new link."
        )
    token = unwrap_key(
        kek=dek, wrapped=bytes(earlier.token_wrapped), context=_context(earlier.pk, tenant.pk)
    ).decode()
    # The link and its study's details go out again, to the token that made them.
    audit.record(
        actor=actor,
        action=Action.API_READ,
        target=share.study,
        tenant=tenant,
        detail={"resource": "shares", "shares": [str(share.pk)], "replayed": True},
    )
    return ShareCreated(share=share, token=token, replayed=True)


def share_requests_purge(*, now: dt.datetime) -> int:
    """Delete every clinic's share requests past their retry window, and the link tokens
    they hold; returns how many."""
    deleted, _ = (
        ShareRequest.objects.unscoped(reason="a platform job purges every clinic's requests")
        .filter(created_at__lte=now - dt.timedelta(hours=SHARE_REQUEST_HOURS))
        .delete()
    )
    return deleted
