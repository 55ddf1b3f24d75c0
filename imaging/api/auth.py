"""DRF authentication by partner API token; the clinic comes from the token."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from audit.actors import client_ip
from tenants.tokens import (
    TOKEN_RATE_LIMITED_TEXT,
    TOKEN_RATE_RETRY_SECONDS,
    TokenRefused,
    api_token_rate_limited,
    api_token_verify,
)


class TokenPrincipal:
    """Stands in for a user on requests made with an API token."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, token: Any) -> None:
        self.token = token
        self.pk = None

    def __str__(self) -> str:
        return f"ApiToken {self.token.prefix}"


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[TokenPrincipal, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        try:
            token = api_token_verify(
                raw=credential, now=timezone.now(), ip=client_ip(request._request)
            )
        except TokenRefused as exc:
            raise exceptions.AuthenticationFailed(exc.message) from None
        # Counted here, before the permission check: a token refused for its scope is
        # refused (and audited) within its budget too. One budget with DICOMweb's.
        if api_token_rate_limited(token=token, now=timezone.now()):
            raise exceptions.Throttled(
                wait=TOKEN_RATE_RETRY_SECONDS, detail=TOKEN_RATE_LIMITED_TEXT
            )
        for target in (request, request._request):
            target.tenant = token.tenant
            target.api_token = token
        return TokenPrincipal(token), token

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer token in the OpenAPI schema."""

    target_class = "imaging.api.auth.ApiTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Partner API token"}
