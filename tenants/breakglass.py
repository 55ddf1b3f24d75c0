"""Break-glass: a clinician opens something outside their normal access, with a reason.

The access is time-limited, audited with a fingerprint of its stated purpose (the
text itself stays on the grant row, which privacy officers review), and the clinic's
privacy officers are emailed after commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

import audit
from audit.actors import Actor, Target
from audit.models import Action
from portal.tasks import task_send_on_commit
from tenants.models import BreakGlassGrant, Membership
from tenants.roles import Perm

MIN_REASON_LENGTH = 10


class BreakGlassRefused(ValidationError):
    """The request for break-glass access is incomplete."""


def break_glass_open(
    *, membership: Membership, target: Target, reason: str, actor: Actor, now: dt.datetime
) -> BreakGlassGrant:
    if not membership.has_perm(Perm.BREAK_GLASS):
        raise PermissionDenied("Your role does not allow break-glass access.")
    reason = " ".join(reason.split())
    if len(reason) < MIN_REASON_LENGTH:
        raise BreakGlassRefused(
            "State the clinical reason for this access (at least "
            f"{MIN_REASON_LENGTH} characters). Privacy officers review every break-glass access."
        )
    tenant = membership.tenant
    with transaction.atomic():
        grant = BreakGlassGrant.objects.create(
            tenant=tenant,
            user=membership.user,
            target_type=target.type,
            target_id=target.id,
            reason=reason,
            created_at=now,
            expires_at=now + dt.timedelta(minutes=settings.BREAK_GLASS_MINUTES),
        )
        audit.record(
            actor=actor,
            action=Action.BREAK_GLASS_OPENED,
            target=target,
            tenant=tenant,
            detail={
                "grant": str(grant.pk),
                "minutes": settings.BREAK_GLASS_MINUTES,
                "reason_sha256": hashlib.sha256(reason.encode()).hexdigest(),
            },
        )
        from tenants.tasks import break_glass_notify

        task_send_on_commit(
            task=break_glass_notify,
            kwargs={"tenant_id": str(tenant.pk), "grant_id": str(grant.pk)},
        )
    return grant


def break_glass_active(
    *, membership: Membership, target: Target, now: dt.datetime
) -> BreakGlassGrant | None:
    """The member's unexpired break-glass grant on `target`, while their role still
    allows breaking the glass (a grant outlives a role taken away, but not its use)."""
    if not membership.has_perm(Perm.BREAK_GLASS):
        return None
    return (
        BreakGlassGrant.objects.for_tenant(membership.tenant)
        .filter(
            user=membership.user,
            target_type=target.type,
            target_id=target.id,
            expires_at__gt=now,
        )
        .order_by("-expires_at")
        .first()
    )
