"""Real browser: a tenant admin invites a radiologist; the invitee creates an account from
the emailed link, enrols a second factor and reaches the worklist."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from tenants.models import Membership
from tests.browser import browser_page, require_chromium, screenshot, sign_in
from tests.helpers import make_clinic, make_member
from tests.tenants_tests.test_browser_signin import _code_from_secret

NEW_PASSWORD = "a long staff passphrase 42"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_admin_invites_and_the_invitee_joins_with_a_second_factor(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    admin = make_member(clinic, "tenant_admin", email="admin@north.example")

    with browser_page() as page:
        sign_in(page, live_server.url, admin, "/t/north/admin/")
        page.get_by_role("link", name="Staff invitations").first.click()
        page.get_by_role("link", name=re.compile("Add staff invitation")).click()
        page.get_by_label("Email").fill("New.Rad@North.example")
        page.get_by_label("Radiologist").check()
        screenshot(page, "staff-invite-1-form")
        page.get_by_role("button", name="Save", exact=True).click()
        page.wait_for_selector("text=Invitation sent to new.rad@north.example")
        assert page.get_by_text("Waiting for the invitee").is_visible()
        screenshot(page, "staff-invite-2-sent")
        [email] = mail.outbox
        link = live_server.url + re.search(r"/accounts/invitation/\S+", email.body)[0]

        invitee = page.context.browser.new_context().new_page()
        invitee.goto(link)
        invitee.wait_for_url("**/accounts/invitation/")
        assert invitee.get_by_role("heading", name="Join North Imaging").is_visible()
        invitee.get_by_label("Your full name").fill("Ada Newrad")
        invitee.get_by_label("Choose a password").fill(NEW_PASSWORD)
        invitee.get_by_label("The password again").fill(NEW_PASSWORD)
        screenshot(invitee, "staff-invite-3-accept")
        invitee.get_by_role("button", name="Create account and accept").click()

        invitee.wait_for_url("**/accounts/enrol/**")
        secret = invitee.locator("#totp-secret").inner_text().strip()
        invitee.get_by_label("6-digit code").fill(_code_from_secret(secret))
        invitee.get_by_role("button", name="Confirm").click()
        invitee.wait_for_selector("#backup-codes")
        invitee.get_by_role("link", name="I have saved them, continue").click()
        invitee.wait_for_url("**/t/north/")
        assert invitee.get_by_role("heading", name="Worklist").is_visible()
        screenshot(invitee, "staff-invite-4-worklist")

        page.goto(f"{live_server.url}/t/north/admin/tenants/membership/")
        assert page.get_by_text("Ada Newrad").is_visible()

    member = Membership.objects.for_tenant(clinic).get(user__email="new.rad@north.example")
    assert member.role_codes == {"radiologist"}
