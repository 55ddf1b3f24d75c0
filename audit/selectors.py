"""Reads of the audit log, always for one clinic."""

from __future__ import annotations

from django.db.models import QuerySet

from audit.models import AuditEvent
from tenants.models import Tenant


def event_list(*, tenant: Tenant) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.for_tenant(tenant).order_by("-seq")
