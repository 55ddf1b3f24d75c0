"""Resolve the clinic from `/t/<slug>/...` once, before any view runs.

A visitor who is not an active member of an active clinic gets exactly the 404 a
missing clinic gets, so a slug's existence is never confirmed to outsiders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.core.validators import slug_re
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from tenants.selectors import membership_for_user, tenant_get_active
from tenants.urlconf import tenant_urlconf

CLINIC_PATH = re.compile(r"^/t/(?P<slug>[^/]+)/")
CLINIC_API_PATH = re.compile(r"^/t/[^/]+/dicomweb/")
# Partners' channels: an API token in the Authorization header is the only credential.
TOKEN_CHANNEL_PREFIXES = ("/dicomweb/", "/api/v1/")


def is_api_path(request: HttpRequest) -> bool:
    """Requests made by the viewer's script, which needs a status code, not a login page."""
    return bool(CLINIC_API_PATH.match(request.path_info))


def signed_out_response() -> HttpResponse:
    return JsonResponse({"error": "Your session has ended; sign in again."}, status=401)


class TokenChannelMiddleware:
    """On the token channels the browser session is not read, kept alive or answered.

    The session and user middlewares are lazy; only the session checks after them read
    the session. Here they find nobody signed in, so a partner's request neither extends
    a staff session whose cookie happens to ride along (its idle limit would never
    bite), nor gets a session cookie, nor `Vary: Cookie`, which would split a partner's
    cache by a header these answers do not depend on.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(TOKEN_CHANNEL_PREFIXES):
            request.user = AnonymousUser()
        return self.get_response(request)


class TenantMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.tenant = None  # type: ignore[attr-defined]
        request.membership = None  # type: ignore[attr-defined]
        match = CLINIC_PATH.match(request.path_info)
        if match:
            if not request.user.is_authenticated:
                if is_api_path(request):
                    return signed_out_response()
                return redirect_to_login(request.get_full_path())
            slug = match["slug"]
            if not slug_re.match(slug):  # a NUL, say, which PostgreSQL refuses to compare
                raise Http404("No such clinic")
            tenant = tenant_get_active(slug=slug)
            membership = membership_for_user(tenant=tenant, user=request.user) if tenant else None
            if membership is None:
                raise Http404("No such clinic")
            request.tenant = tenant  # type: ignore[attr-defined]
            request.membership = membership  # type: ignore[attr-defined]
            request.urlconf = tenant_urlconf(slug)  # type: ignore[attr-defined]
            # Pages, forms and `__date` lookups read the clock in the clinic's zone.
            with timezone.override(tenant.zone):
                return self.get_response(request)
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> None:
        # Views read the clinic from request.tenant; the slug in the URL has done its job.
        view_kwargs.pop("tenant_slug", None)
