"""Reads of the audit log, always for one clinic."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q, QuerySet

from audit.actors import Target
from audit.models import ActorType, AuditEvent
from tenants.models import ApiToken, Membership, Tenant


def event_list(*, tenant: Tenant) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.for_tenant(tenant).order_by("-seq")


def events_for_targets(*, tenant: Tenant, targets: Iterable[Target]) -> QuerySet[AuditEvent]:
    """Events about any of `targets` (a study and its series, say), newest first."""
    match = Q(pk__in=[])
    by_type: dict[str, list[str]] = {}
    for target in targets:
        by_type.setdefault(target.type, []).append(target.id)
    for target_type, ids in by_type.items():
        match |= Q(target_type=target_type, target_id__in=ids)
    return event_list(tenant=tenant).filter(match)


def actor_labels(*, tenant: Tenant, events: Iterable[AuditEvent]) -> dict[tuple[str, str], str]:
    """Readable names for the actors of `events`: a member's email and roles, a token's name."""
    events = list(events)
    user_ids = {e.actor_id for e in events if e.actor_type == ActorType.USER}
    token_ids = {e.actor_id for e in events if e.actor_type == ActorType.API_TOKEN}
    labels: dict[tuple[str, str], str] = {}
    memberships = (
        Membership.objects.for_tenant(tenant)
        .filter(user_id__in=user_ids)
        .select_related("user")
        .prefetch_related("roles")
    )
    for membership in memberships:
        roles = ", ".join(sorted(role.name for role in membership.roles.all()))
        labels[(ActorType.USER, str(membership.user_id))] = f"{membership.user.email} ({roles})"
    for token in ApiToken.objects.for_tenant(tenant).filter(pk__in=token_ids):
        labels[(ActorType.API_TOKEN, str(token.pk))] = f"API token “{token.name}”"
    return labels
