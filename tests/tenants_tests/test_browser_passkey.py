"""Real browser with a virtual authenticator: enrol a passkey, then sign in with it."""

from __future__ import annotations

import pytest

from audit.models import Action, AuditEvent
from tests.browser import browser_page, require_chromium, screenshot
from tests.helpers import PASSWORD, make_clinic, make_member


def _sign_in_password(page, base, email):
    page.goto(f"{base}/accounts/login/?next=/t/north/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(180)
def test_enrol_a_passkey_and_sign_in_with_it(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    user = make_member(clinic, "radiologist", email="rad@north.example")

    with browser_page() as page:
        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )
        _sign_in_password(page, live_server.url, user.email)
        page.wait_for_url("**/accounts/enrol/**")
        page.get_by_role("button", name="Add a passkey").click()
        page.locator("#passkey-register-status-message").filter(has_text="success").wait_for()
        screenshot(page, "passkey-1-enrolled")
        continue_link = page.get_by_role("link", name="Continue once your passkey is added")
        page.goto(live_server.url + continue_link.get_attribute("href"))
        page.wait_for_url("**/t/north/")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/accounts/login/")

        _sign_in_password(page, live_server.url, user.email)
        page.wait_for_url("**/accounts/verify/**")
        page.get_by_role("button", name="Use a passkey").click()
        page.wait_for_url("**/t/north/")
        assert page.get_by_role("heading", name="Worklist").is_visible()
        screenshot(page, "passkey-2-signed-in")

    events = AuditEvent.objects.for_tenant(clinic).filter(target_id=str(user.pk))
    assert events.filter(action=Action.MFA_DEVICE_CONFIRMED, detail__device="passkey").exists()
    assert events.filter(action=Action.MFA_VERIFIED, detail__device="passkey").exists()
