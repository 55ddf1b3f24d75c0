"""Site-wide views: health probes and the signed-in landing page."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal.tasks import broker_check
from tenants.access import landing_url
from tenants.roles import Perm
from tenants.selectors import user_memberships

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_storage() -> None:
    root = Path(settings.PORTAL_STORAGE_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".readyz-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    probe.unlink()


READINESS_CHECKS = {
    "database": _check_database,
    "storage": _check_storage,
    "broker": broker_check,
}


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Database, storage and broker reachable; 503 naming the part that is not."""
    results: dict[str, str] = {}
    for name, check in READINESS_CHECKS.items():
        try:
            check()
        except Exception:
            logger.exception("readiness check %s failed", name)
            results[name] = "unavailable"
        else:
            results[name] = "ok"
    failing = sorted(name for name, state in results.items() if state != "ok")
    body = {"status": "ok" if not failing else "unavailable", "checks": results}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send a signed-in person to their clinic, or let them choose one."""
    memberships = list(user_memberships(user=request.user))
    if len(memberships) == 1:
        return redirect(landing_url(memberships[0]))
    if memberships and all(m.permissions == {Perm.OWN_STUDIES} for m in memberships):
        # A patient of several clinics: one portal page lists them all.
        return redirect(landing_url(memberships[0]))
    return render(
        request,
        "portal/choose_clinic.html",
        {"choices": [(m, landing_url(m)) for m in memberships]},
    )
