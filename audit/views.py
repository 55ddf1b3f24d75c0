"""The clinic's audit log, for privacy officers. Reading it is itself audited."""

from __future__ import annotations

import json

from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

import audit
from audit.actors import Actor
from audit.forms import AuditFilterForm
from audit.models import Action
from audit.selectors import STUDY_TARGET_TYPE, actor_labels, event_list
from tenants.access import require_perm
from tenants.roles import Perm

PAGE_SIZE = 50


@never_cache
@require_perm(Perm.AUDIT_READ)
def audit_log(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    form = AuditFilterForm(request.GET or None, tenant=tenant)
    filtered = form.is_valid()
    refused = form.is_bound and not filtered
    events = event_list(tenant=tenant, filters=form.event_filter() if filtered else None)
    if refused:
        # Filters that cannot apply list nothing: the whole log under their error would
        # read as what they found.
        events = events.none()
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    labels = actor_labels(tenant=tenant, events=page)
    with transaction.atomic():
        audit.record(
            actor=Actor.from_request(request),
            action=Action.AUDIT_VIEWED,
            target=None,
            tenant=tenant,
            # What the officer looked into: ids and kinds, which hold no PHI.
            detail={"page": page.number, "filters": form.used() if filtered else {}},
        )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/audit_log.html",
        {
            "form": form,
            "page": page,
            "rows": [
                {
                    "event": e,
                    "actor": labels.get((e.actor_type, e.actor_id), ""),
                    "detail": json.dumps(e.detail, sort_keys=True, ensure_ascii=False)
                    if e.detail
                    else "",
                }
                for e in page
            ],
            "study_type": STUDY_TARGET_TYPE,
            "query": query.urlencode(),
            "refused": refused,
        },
        status=400 if refused else 200,
    )
