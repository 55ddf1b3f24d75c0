"""The partner REST API's rate limit: the same per-token budget as DICOMweb."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework.throttling import BaseThrottle

from tenants.tokens import api_token_rate_limited

RETRY_AFTER_SECONDS = 60  # the budget is per clock minute


class TokenRateThrottle(BaseThrottle):
    """Refuse a token's requests past `API_RATE_LIMIT_PER_MINUTE` (429, `Retry-After`)."""

    def allow_request(self, request: Any, view: Any) -> bool:
        token = getattr(request, "api_token", None)
        if token is None:  # unauthenticated: refused before this by the permission check
            return True
        return not api_token_rate_limited(token=token, now=timezone.now())

    def wait(self) -> float:
        return RETRY_AFTER_SECONDS
