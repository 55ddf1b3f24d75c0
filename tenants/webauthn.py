"""Passkeys (WebAuthn) as a second factor, through django-otp-webauthn.

The library's ceremony views are reused; completing one goes through this module so
a passkey sign-in is handled exactly like a TOTP one: new session key, step-up clock,
audit event. Passwordless sign-in is off: a passkey is the second step after the
password. Adding a passkey needs a verified session, except at first enrolment.
"""

from __future__ import annotations

import binascii
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.i18n import JavaScriptCatalog
from django_otp_webauthn import exceptions as webauthn_errors
from django_otp_webauthn import views as webauthn_views
from django_otp_webauthn.helpers import WebAuthnHelper
from webauthn.helpers import base64url_to_bytes

import audit
from audit.actors import Actor, client_ip
from audit.models import Action, Outcome
from tenants.mfa import MFA_AT, session_mark_verified, step_up_is_fresh
from tenants.throttle import ThrottleKey, register_failure


def rp_id(request: HttpRequest) -> str:
    """The relying party: this site's host name (validated by ALLOWED_HOSTS), no port."""
    return settings.WEBAUTHN_RP_ID or request.get_host().rsplit(":", 1)[0]


class PortalWebAuthnHelper(WebAuthnHelper):
    def get_allowed_origins(self) -> list[str]:
        if settings.WEBAUTHN_ALLOWED_ORIGINS:
            return list(settings.WEBAUTHN_ALLOWED_ORIGINS)
        scheme = "https" if self.request.is_secure() else "http"
        return [f"{scheme}://{self.request.get_host()}"]


def _base64url(text: str) -> bool:
    """Whether `text` decodes as base64url (unpadded, as WebAuthn sends it)."""
    if not text.isascii():
        return False
    try:
        base64url_to_bytes(text)
    except (binascii.Error, ValueError):
        return False
    return True


class ReadableRequestMixin:
    """For the ceremony views: a body that cannot be read is a 400, not a server error.

    The library turns only a JSON syntax error into one; a document nested past the
    decoder's recursion limit (two kilobytes of `[`) raised, and so did a number past
    Python's limit on integer digits (4,300).
    """

    def _parse_request_data(self, request: HttpRequest) -> Any:
        try:
            return super()._parse_request_data(request)  # type: ignore[misc]
        except (RecursionError, ValueError):
            raise webauthn_errors.MalformedRequest() from None


class BeginAuthentication(ReadableRequestMixin, webauthn_views.BeginCredentialAuthenticationView):
    pass


class CompleteAuthentication(
    ReadableRequestMixin, webauthn_views.CompleteCredentialAuthenticationView
):
    def initial(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # py_webauthn decodes userHandle outside the checks that turn a malformed
        # credential into the library's error: one that is not base64url raised.
        response = request.data.get("response") if isinstance(request.data, dict) else None
        handle = response.get("userHandle") if isinstance(response, dict) else None
        if isinstance(handle, str) and not _base64url(handle):
            raise webauthn_errors.MalformedRequest()

    def complete_auth(self, device: Any) -> Any:
        step_up = self.request.user.is_verified()
        session_mark_verified(self.request, device)
        audit.record_for_user(
            user=device.user,
            actor=Actor.from_request(self.request),
            action=Action.STEP_UP_VERIFIED if step_up else Action.MFA_VERIFIED,
            detail={"device": "passkey"},
        )
        return device.user

    def handle_exception(self, exc: Exception) -> HttpResponse:
        # The library raises on a failed ceremony; record and count it like a wrong code.
        user = self.request.user
        if user.is_authenticated:
            register_failure(
                ThrottleKey(kind="otp", account=user.email, ip=client_ip(self.request))
            )
            audit.record_for_user(
                user=user,
                actor=Actor.from_request(self.request),
                action=Action.MFA_FAILED,
                outcome=Outcome.FAILURE,
                detail={"device": "passkey"},
            )
        return super().handle_exception(exc)


class BeginRegistration(ReadableRequestMixin, webauthn_views.BeginCredentialRegistrationView):
    def post(self, *args: Any, **kwargs: Any) -> HttpResponse:
        if self.request.user.is_verified() and not step_up_is_fresh(self.request):
            return JsonResponse(
                {"detail": "Confirm it's you first: re-enter a code from your authenticator."},
                status=403,
            )
        return super().post(*args, **kwargs)


class CompleteRegistration(ReadableRequestMixin, webauthn_views.CompleteCredentialRegistrationView):
    @transaction.atomic
    def post(self, *args: Any, **kwargs: Any) -> HttpResponse:
        was_verified = self.request.user.is_verified()
        response = super().post(*args, **kwargs)
        if isinstance(response, JsonResponse) and response.status_code == 200:
            audit.record_for_user(
                user=self.request.user,
                actor=Actor.from_request(self.request),
                action=Action.MFA_DEVICE_CONFIRMED,
                detail={"device": "passkey"},
            )
            if not was_verified:
                # First enrolment with a passkey: the ceremony proved possession.
                self.request.session.cycle_key()
                self.request.session[MFA_AT] = int(time.time())
        return response


app_name = "otp_webauthn"
urlpatterns = [
    path(
        "registration/begin/",
        BeginRegistration.as_view(),
        name="credential-registration-begin",
    ),
    path(
        "registration/complete/",
        CompleteRegistration.as_view(),
        name="credential-registration-complete",
    ),
    path(
        "authentication/begin/",
        BeginAuthentication.as_view(),
        name="credential-authentication-begin",
    ),
    path(
        "authentication/complete/",
        CompleteAuthentication.as_view(),
        name="credential-authentication-complete",
    ),
    path(
        "jsi18n/",
        JavaScriptCatalog.as_view(packages=["django_otp_webauthn"]),
        name="js-i18n-catalog",
    ),
]
