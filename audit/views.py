"""The clinic's audit log, for privacy officers. Reading it is itself audited."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

import audit
from audit.actors import Actor
from audit.models import Action
from audit.selectors import event_list
from tenants.access import require_perm
from tenants.roles import Perm

PAGE_SIZE = 50


@never_cache
@require_perm(Perm.AUDIT_READ)
def audit_log(request: HttpRequest) -> HttpResponse:
    page = Paginator(event_list(tenant=request.tenant), PAGE_SIZE).get_page(request.GET.get("page"))
    with transaction.atomic():
        audit.record(
            actor=Actor.from_request(request),
            action=Action.AUDIT_VIEWED,
            target=None,
            tenant=request.tenant,
            detail={"page": page.number},
        )
    return render(request, "audit/audit_log.html", {"page": page})
