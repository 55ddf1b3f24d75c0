"""CORS for browser viewers (OHIF and the like) calling /dicomweb/ with a bearer token.

A preflight carries no token, so it is answered for an origin that some active clinic
allows; the real request then gets the CORS headers only if the token's own clinic
allows that origin. Credentials (cookies) are never allowed cross-origin.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

from tenants.models import Tenant

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept"
EXPOSED_HEADERS = "Content-Type, Content-Length, Warning"


def _any_clinic_allows(origin: str) -> bool:
    for text in (
        Tenant.objects.filter(status=Tenant.Status.ACTIVE)
        .exclude(cors_allowed_origins="")
        .values_list("cors_allowed_origins", flat=True)
    ):
        if origin in {line.strip().rstrip("/") for line in text.splitlines()}:
            return True
    return False


class DicomwebCorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        origin = request.headers.get("Origin", "").rstrip("/")
        if not request.path.startswith("/dicomweb/") or not origin:
            return self.get_response(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not _any_clinic_allows(origin):
                return HttpResponse(status=403)
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response["Access-Control-Max-Age"] = "600"
            response["Vary"] = "Origin"
            return response
        response = self.get_response(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None and origin in tenant.cors_origins:
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        patch_vary_headers(response, ["Origin"])  # beside the view's own (Accept)
        return response
