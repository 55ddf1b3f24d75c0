"""Periodic work on the audit chains (Celery beat): checkpoints and integrity checks."""

from __future__ import annotations

import logging

from django.utils import timezone

import audit
from audit.actors import Actor
from audit.checkpoints import checkpoints_write
from audit.models import Action, Outcome
from audit.verify import CHAIN_MISSING, chains_verify
from portal.tasks import portal_task
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@portal_task(max_retries=0, ignore_result=False)
def audit_chains_verify() -> dict[str, int]:
    """Verify every chain; record the result in each clinic's own chain."""
    reports = chains_verify()
    broken = 0
    for report in reports:
        if not report.intact:
            broken += 1
            logger.error(
                "audit chain %s broken at seq %s (%s)",
                report.chain_key,
                report.broken_seq,
                report.reason,
            )
        tenant = Tenant.objects.get(pk=report.tenant_id) if report.tenant_id else None
        detail = {"events": report.events, "broken_seq": report.broken_seq}
        if tenant is not None and report.reason == CHAIN_MISSING:
            # Its chain is missing, and is not started again: reported in the platform's.
            tenant, detail["tenant"] = None, str(report.tenant_id)
        audit.record(
            actor=Actor.system("audit.verify"),
            action=Action.AUDIT_VERIFIED,
            target=None,
            tenant=tenant,
            outcome=Outcome.SUCCESS if report.intact else Outcome.FAILURE,
            detail=detail,
        )
    return {"chains": len(reports), "broken": broken}


@portal_task(max_retries=0)
def audit_checkpoints_write() -> int:
    """Checkpoint every chain whose head moved (not audited: it reads no PHI, and an
    event of its own would move the head it has just checkpointed). A chain refused is
    logged as an error there."""
    return checkpoints_write(now=timezone.now()).written
