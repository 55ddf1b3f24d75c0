"""One error format for the REST API: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from audit.actors import Actor, client_ip
from portal.denials import access_denied_record


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected errors: Django's 500 handler, no details leaked
    request = context.get("request")
    token = getattr(request, "api_token", None)
    if response.status_code == 403 and token is not None:  # a known partner, refused
        access_denied_record(
            request=request._request,
            tenant=token.tenant,
            actor=Actor.for_token(token, ip=client_ip(request._request)),
            reason=str(getattr(exc, "detail", exc)),
        )
    detail = response.data
    error: dict[str, Any] = {"code": getattr(exc, "default_code", "error")}
    if isinstance(detail, dict) and "detail" in detail:
        error["message"] = str(detail["detail"])
    elif isinstance(detail, dict):
        error["message"] = "Some parameters are invalid."
        error["fields"] = {
            k: [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in detail.items()
        }
    else:
        error["message"] = str(detail)
    response.data = {"error": error}
    return response
