"""The passkey ceremony endpoints answer a body they cannot read with a 400."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import Action, AuditEvent

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    "/accounts/webauthn/registration/begin/",
    "/accounts/webauthn/registration/complete/",
    "/accounts/webauthn/authentication/begin/",
    "/accounts/webauthn/authentication/complete/",
]
NESTED = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", [NESTED, "9" * 5000], ids=["nested", "long-number"])
def test_json_the_decoder_refuses_is_a_400_before_and_after_the_password(
    endpoint, body, radiologist, password_only_client_for
):
    for client in (Client(), password_only_client_for(radiologist)):
        response = client.post(endpoint, body, content_type="application/json")

        # Registration wants a signed-in person first; either way, a client error.
        assert 400 <= response.status_code < 500, (endpoint, response.status_code)
        if endpoint.endswith("authentication/complete/"):
            assert response.status_code == 400


@pytest.mark.parametrize("handle", ["\u00e9", "x", "A" * 101], ids=["non-ascii", "one", "odd"])
def test_a_user_handle_that_is_not_base64url_is_a_failed_attempt_not_an_error(
    clinic, radiologist, password_only_client_for, handle
):
    client = password_only_client_for(radiologist)
    client.post("/accounts/webauthn/authentication/begin/", {}, content_type="application/json")
    credential = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {
            "clientDataJSON": "e30",
            "authenticatorData": "AAAA",
            "signature": "AAAA",
            "userHandle": handle,
        },
    }

    response = client.post(
        "/accounts/webauthn/authentication/complete/", credential, content_type="application/json"
    )

    assert response.status_code == 400
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.MFA_FAILED).count() == 1
