"""Real browser: sign in, enrol TOTP from the secret on the page, reach the clinic, sign out."""

from __future__ import annotations

import base64

import pytest
from django_otp.oath import totp

from audit.models import Action, AuditEvent
from tests.browser import browser_page, require_chromium, screenshot
from tests.helpers import PASSWORD, make_clinic, make_member


def _code_from_secret(secret: str) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{totp(key):06d}"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(180)
def test_sign_in_enrol_totp_reach_clinic_and_sign_out(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    user = make_member(clinic, "radiologist", email="rad@north.example")

    with browser_page() as page:
        page.goto(f"{live_server.url}/accounts/login/?next=/t/north/")
        page.get_by_label("Email address").fill(user.email)
        page.get_by_label("Password").fill(PASSWORD)
        screenshot(page, "signin-1-password")
        page.get_by_role("button", name="Sign in").click()

        page.wait_for_url("**/accounts/enrol/**")
        secret = page.locator("#totp-secret").inner_text().strip()
        assert page.get_by_role("img", name="QR code for your authenticator app").is_visible()
        page.get_by_label("6-digit code").fill(_code_from_secret(secret))
        screenshot(page, "signin-2-enrol")
        page.get_by_role("button", name="Confirm").click()

        page.wait_for_selector("#backup-codes")
        assert page.locator("#backup-codes li").count() == 10
        screenshot(page, "signin-3-backup-codes")
        page.get_by_role("link", name="I have saved them, continue").click()

        page.wait_for_url("**/t/north/")
        assert page.get_by_role("heading", name="Worklist").is_visible()
        assert page.get_by_text("North Imaging").first.is_visible()
        screenshot(page, "signin-4-clinic-home")
        page.get_by_role("button", name="Sign out").click()

        page.wait_for_url("**/accounts/login/")
        page.goto(f"{live_server.url}/t/north/")
        assert "/accounts/login/" in page.url

    actions = set(
        AuditEvent.objects.for_tenant(clinic)
        .filter(target_id=str(user.pk))
        .values_list("action", flat=True)
    )
    assert {Action.LOGIN_SUCCEEDED, Action.MFA_DEVICE_CONFIRMED, Action.LOGOUT} <= actions
