"""Refusals of a clinic's pages and data to someone the clinic knows, on its audit log.

A member whose role does not allow a page, a download or the images, and a partner's
token without the scope, are refused with a 403 that says why. A privacy officer asks
who tried as well as who saw, so each refusal is recorded: who, which route, what it
named (the study, when the route names one), and why.
"""

from __future__ import annotations

import uuid

from django.http import HttpRequest

import audit
from audit.actors import Actor, Target
from audit.models import Action, Outcome
from audit.selectors import STUDY_TARGET_TYPE
from tenants.models import Tenant


def _target(request: HttpRequest, tenant: Tenant) -> tuple[Target | None, dict[str, str]]:
    from imaging.dicom import valid_uid
    from imaging.models import Study

    match = getattr(request, "resolver_match", None)
    kwargs = dict(match.kwargs) if match is not None else {}
    if isinstance(kwargs.get("study_id"), uuid.UUID):
        return Target(type=STUDY_TARGET_TYPE, id=str(kwargs["study_id"])), {}
    uid = kwargs.get("study")
    if isinstance(uid, str) and not valid_uid(uid):
        # Refusals come before the UID is checked: a NUL would fail the query (and the
        # refusal's record) on PostgreSQL, and other bytes have no place on the log.
        return None, {"study_uid_invalid": "true"} if uid else {}
    if isinstance(uid, str):
        found = Study.objects.for_tenant(tenant).filter(study_uid=uid).values_list("pk", flat=True)
        if study_id := found.first():
            return Target(type=STUDY_TARGET_TYPE, id=str(study_id)), {}
        return None, {"study_uid": uid}  # not this clinic's: the UID as asked for
    return None, {}


def access_denied_record(
    *, request: HttpRequest, tenant: Tenant, actor: Actor, reason: str
) -> None:
    """Record that `actor` was refused this request in `tenant`, and why."""
    match = getattr(request, "resolver_match", None)
    target, named = _target(request, tenant)
    audit.record(
        actor=actor,
        action=Action.ACCESS_DENIED,
        target=target,
        tenant=tenant,
        outcome=Outcome.DENIED,
        detail={
            "route": match.url_name if match is not None else "",
            "method": request.method or "",
            "reason": reason[:200],
            **named,
        },
    )
