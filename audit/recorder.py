"""The one write path into the audit log."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor, Target
from audit.hashing import event_hash
from audit.keys import audit_key
from audit.models import PLATFORM_CHAIN_KEY, Action, AuditChain, AuditEvent, Outcome

if TYPE_CHECKING:
    from django.db import models

    from tenants.models import Tenant

_DETAIL_SCALARS = (str, int, bool, type(None))
MAX_DETAIL_BYTES = 4096


class AuditDetailError(ValueError):
    """Detail must be small JSON of ids and counts."""


def _check_detail(value: Any, depth: int = 0) -> None:
    if depth > 4:
        raise AuditDetailError("audit detail nests too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailError("audit detail keys must be strings")
            _check_detail(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_detail(item, depth + 1)
    elif not isinstance(value, _DETAIL_SCALARS):
        raise AuditDetailError(f"audit detail cannot hold {type(value).__name__}")


def chain_key_for(tenant: Tenant | None) -> str:
    return str(tenant.pk) if tenant is not None else PLATFORM_CHAIN_KEY


def _locked_chain(tenant: Tenant | None) -> AuditChain:
    # The row lock serialises writers per clinic on PostgreSQL; on SQLite the
    # IMMEDIATE transaction mode already holds the database write lock.
    chain, _ = AuditChain.objects.select_for_update().get_or_create(
        key=chain_key_for(tenant), defaults={"tenant": tenant}
    )
    return chain


def record(
    *,
    actor: Actor,
    action: Action,
    target: models.Model | Target | None,
    tenant: Tenant | None,
    outcome: Outcome = Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEvent:
    """Append one event to the clinic's chain, inside the caller's transaction.

    `detail` carries ids, counts and codes, never names, dates of birth or tag values.
    """
    detail = dict(detail or {})
    _check_detail(detail)
    action = Action(action)  # refuses an unknown action
    target_ref = Target.of(target)
    created_at = at or timezone.now()
    with transaction.atomic():
        chain = _locked_chain(tenant)
        seq = chain.last_seq + 1
        event = AuditEvent(
            chain=chain,
            seq=seq,
            tenant=tenant,
            created_at=created_at,
            actor_type=actor.type,
            actor_id=actor.id,
            actor_ip=actor.ip,
            action=action,
            target_type=target_ref.type,
            target_id=target_ref.id,
            outcome=outcome,
            detail=detail,
            prev_hash=chain.last_hash,
        )
        event.hash = hash_of(event, chain_key=chain.key)
        event.save(force_insert=True)
        AuditChain.objects.filter(pk=chain.pk).update(last_seq=seq, last_hash=event.hash)
    return event


def hash_of(event: AuditEvent, *, chain_key: str) -> str:
    return event_hash(
        key=audit_key(),
        chain_key=chain_key,
        seq=event.seq,
        tenant_id=str(event.tenant_id or ""),
        created_at=event.created_at,
        actor_type=str(event.actor_type),
        actor_id=event.actor_id,
        actor_ip=event.actor_ip,
        action=str(event.action),
        target_type=event.target_type,
        target_id=event.target_id,
        outcome=str(event.outcome),
        detail=event.detail,
        prev_hash=event.prev_hash,
    )


def record_for_user(
    *,
    user: Any,
    actor: Actor,
    action: Action,
    outcome: Outcome = Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
) -> list[AuditEvent]:
    """Record an event about a person in every clinic they belong to (else the platform).

    Sign-in, second-factor and session events concern the person, not one clinic; each
    clinic's privacy officer needs to see them for that clinic's staff and patients.
    """
    from tenants.selectors import user_tenants

    tenants: list[Tenant | None] = list(user_tenants(user=user)) if user is not None else []
    return [
        record(
            actor=actor, action=action, target=user, tenant=tenant, outcome=outcome, detail=detail
        )
        for tenant in tenants or [None]
    ]
