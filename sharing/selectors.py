"""Reads of share links, always for one clinic."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from sharing.models import ShareLink
from tenants.models import Tenant, User


def share_list(*, tenant: Tenant, created_by: User) -> QuerySet[ShareLink]:
    return (
        ShareLink.objects.for_tenant(tenant)
        .filter(created_by=created_by)
        .select_related("study", "study__patient")
        .order_by("-created_at")
    )


def share_get(*, tenant: Tenant, share_id: uuid.UUID) -> ShareLink | None:
    return (
        ShareLink.objects.for_tenant(tenant)
        .select_related("study", "study__patient")
        .filter(pk=share_id)
        .first()
    )
