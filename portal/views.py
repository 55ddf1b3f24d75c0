"""Site-wide views: health probes and the signed-in landing page."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from audit.actors import Actor
from imaging.keys import key_provider_check
from imaging.storage import storage_ready_check
from portal.denials import access_denied_record
from portal.logredact import raised_at
from portal.tasks import broker_check
from tenants.access import landing_url
from tenants.roles import Perm
from tenants.selectors import user_memberships

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


READINESS_CHECKS = {
    "database": _check_database,
    "storage": storage_ready_check,
    "keys": key_provider_check,
    "broker": broker_check,
}
# Probes arrive from every load balancer and orchestrator, and anyone can send one: an
# answer serves every probe to this process for a few seconds, and one probe at a time
# runs the checks (KMS and S3 calls cost money and share the account's quotas).
READINESS_CACHE_SECONDS = 5.0
# A check failing on every probe logs once a minute, not once a probe.
READINESS_LOG_SECONDS = 60.0


@dataclass
class _Readiness:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered_at: float = -math.inf
    body: dict[str, Any] = field(default_factory=dict)
    logged_at: dict[str, float] = field(default_factory=dict)


_readiness = _Readiness()


def readiness_reset() -> None:
    """Forget the last answer (settings changed, e.g. in tests)."""
    global _readiness
    _readiness = _Readiness()


def _readiness_body() -> dict[str, Any]:
    state = _readiness
    with state.lock:  # a probe arriving meanwhile waits for this one's answer
        now = time.monotonic()
        if now - state.answered_at < READINESS_CACHE_SECONDS:
            return state.body
        results: dict[str, str] = {}
        for name, check in READINESS_CHECKS.items():
            try:
                check()
            except Exception as exc:
                if now - state.logged_at.get(name, -math.inf) >= READINESS_LOG_SECONDS:
                    state.logged_at[name] = now
                    logger.error(
                        "readiness check %s failed: %s at %s",
                        name,
                        type(exc).__name__,
                        raised_at(exc),
                    )
                results[name] = "unavailable"
            else:
                state.logged_at.pop(name, None)
                results[name] = "ok"
        failing = sorted(name for name, value in results.items() if value != "ok")
        body: dict[str, Any] = {"status": "ok" if not failing else "unavailable", "checks": results}
        if failing:
            body["failing"] = failing
        state.answered_at, state.body = time.monotonic(), body
        return body


@never_cache
@require_safe
def readyz(request: HttpRequest) -> HttpResponse:
    """Database, storage (every clinic's), key provider and broker reachable; 503 naming
    the part that is not."""
    body = _readiness_body()
    return JsonResponse(body, status=503 if body.get("failing") else 200)


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


# The partner and recipient roots. A clinic's own viewer root (/t/<slug>/dicomweb/)
# keeps the page: its 404 must read the same whether or not the clinic exists.
_DICOMWEB_PATH = re.compile(r"/(?:s/)?dicomweb/")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403: the page says why; a member of the clinic refused is on its audit log."""
    tenant = getattr(request, "tenant", None)
    user = getattr(request, "user", None)
    if tenant is not None and user is not None and user.is_authenticated:
        access_denied_record(
            request=request, tenant=tenant, actor=Actor.from_request(request), reason=str(exception)
        )
    return defaults.permission_denied(request, exception)


SERVER_ERROR_TEXT = (
    "The server met an unexpected error; it was recorded. Try again, and if it persists, "
    "contact support with the time it happened."
)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: a partner's client reads the JSON error its API gives everywhere else; the
    cause stays in the server's log (Django's handler logged it before calling this)."""
    if request.path_info.startswith("/api/"):
        error = {"code": "server_error", "message": SERVER_ERROR_TEXT}
        return JsonResponse({"error": error}, status=500)
    if _DICOMWEB_PATH.match(request.path_info):
        return JsonResponse({"error": SERVER_ERROR_TEXT}, status=500)
    return defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form whose CSRF check failed: the portal's own page; the reason stays in the log."""
    message = "The CSRF check failed: reload the page that sends this and try again."
    if request.path_info.startswith("/api/"):
        return JsonResponse({"error": {"code": "csrf_failed", "message": message}}, status=403)
    if _DICOMWEB_PATH.match(request.path_info):
        return JsonResponse({"error": message}, status=403)
    return render(request, "403_csrf.html", status=403)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for a path no route matches (a typo, an id not in canonical UUID form): on the
    partner API and DICOMweb, their JSON error, the same as for a missing object."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"error": {"code": "not_found", "message": "Not found."}}, status=404)
    if _DICOMWEB_PATH.match(request.path_info):
        return JsonResponse({"error": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
