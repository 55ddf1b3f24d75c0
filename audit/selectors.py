"""Reads of the audit log, always for one clinic."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import F, Q, QuerySet

from audit.actors import Target
from audit.models import ActorType, AuditEvent
from tenants.models import ApiToken, Membership, Tenant

# Target types as audit.actors.Target writes them (a model's label, lower case); the
# imaging and portal code that names studies in events imports these.
STUDY_TARGET_TYPE = "imaging.study"
SERIES_TARGET_TYPE = "imaging.series"


@dataclass(frozen=True)
class EventFilter:
    """What a privacy officer narrows the log to; every part optional."""

    study_ids: tuple[str, ...] = ()  # the study, then its series: their ids as events hold them
    actor: tuple[str, str] | None = None  # (actor type, actor id)
    action: str = ""
    outcome: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None


def event_list(*, tenant: Tenant, filters: EventFilter | None = None) -> QuerySet[AuditEvent]:
    # Only events on the clinic's chain up to its head: a row written around the chain
    # (verification reports it) is never shown as if it were recorded.
    events = (
        AuditEvent.objects.for_tenant(tenant)
        .filter(chain__tenant=tenant, seq__lte=F("chain__last_seq"))
        .order_by("-seq")
    )
    if filters is None:
        return events
    if filters.study_ids:
        study, *series = filters.study_ids
        events = events.filter(_about_study(study, series))
    if filters.actor is not None:
        events = events.filter(actor_type=filters.actor[0], actor_id=filters.actor[1])
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.outcome:
        events = events.filter(outcome=filters.outcome)
    if filters.date_from:
        events = events.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        events = events.filter(created_at__date__lte=filters.date_to)
    return events


def _about_study(study_id: str, series_ids: Iterable[str]) -> Q:
    # Events aimed at the study or one of its series, and those naming it in their detail:
    # worklist pages, searches and list reads name every study they showed, a series'
    # first view its study. Indexes serve each part on PostgreSQL (audit.lookups).
    return (
        Q(target_type=STUDY_TARGET_TYPE, target_id=study_id)
        | Q(target_type=SERIES_TARGET_TYPE, target_id__in=list(series_ids))
        | Q(detail__mentions=study_id)
    )


def events_about_study(
    *, tenant: Tenant, study_id: str, series_ids: Iterable[str]
) -> QuerySet[AuditEvent]:
    """Everything the log holds about one study, newest first: who saw it, and how."""
    return event_list(tenant=tenant).filter(_about_study(study_id, series_ids))


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
