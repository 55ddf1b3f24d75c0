"""Bearer-token authentication for DICOMweb: the clinic comes from the credential."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from tenants.tokens import api_token_authenticate


def dicomweb_error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _rate_limited(token_id: str) -> bool:
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    if not limit:
        return False
    key = f"ratelimit:token:{token_id}:{int(timezone.now().timestamp() // 60)}"
    cache.add(key, 0, timeout=120)
    try:
        return cache.incr(key) > limit
    except ValueError:
        return False


def token_required(
    scope: str,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Authenticate `Authorization: Bearer <token>`, require `scope`, set request.tenant.

    Token requests carry no cookies and no session, so CSRF does not apply.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, credential = header.partition(" ")
            token = (
                api_token_authenticate(raw=credential, now=timezone.now())
                if scheme.lower() == "bearer" and credential
                else None
            )
            if token is None:
                return dicomweb_error(
                    401,
                    "A valid, unexpired API token is required (Authorization: Bearer <token>).",
                    WWW_Authenticate='Bearer realm="dicomweb"',
                )
            if not token.has_scope(scope):
                return dicomweb_error(403, f"This token lacks the {scope} scope.")
            if _rate_limited(str(token.pk)):
                return dicomweb_error(
                    429, "Too many requests for this token; retry in a minute.", Retry_After="60"
                )
            request.tenant = token.tenant  # type: ignore[attr-defined]
            request.api_token = token  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
