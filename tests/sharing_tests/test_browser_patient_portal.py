"""Real browser: front desk invites a patient; the patient, on a phone, accepts, views and
shares a study with a PIN; the recipient opens it on a phone; the patient revokes; the
recipient's next action fails."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from tests.browser import SHARE_METADATA_STATUS as METADATA_STATUS
from tests.browser import browser_page, require_chromium, screenshot, sign_in
from tests.helpers import make_clinic, make_member
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(300)
def test_front_desk_invites_patient_who_shares_on_a_phone_then_revokes(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    front_desk = make_member(clinic, "front_desk", email="desk@north.example")
    study = ingest_study(
        clinic,
        synthetic_ct(
            slices=12,
            size=64,
            patient_name="Doe^Jane<script>alert(1)</script>",
            tags={"StudyDescription": "Chest CT", "PixelSpacing": [0.5, 0.5]},
        ),
    )
    ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_id="P-OTHER"))

    with browser_page() as desk:
        sign_in(desk, live_server.url, front_desk, f"/t/north/studies/{study.pk}/")
        desk.get_by_role("link", name="Patient portal…").click()
        desk.get_by_label("Patient's email address").fill("jane@example.org")
        desk.get_by_role("button", name="Send invitation").click()
        desk.wait_for_selector("text=Invitation sent")
        screenshot(desk, "portal-1-front-desk-invited")
        [email] = mail.outbox
        invitation_url = live_server.url + re.search(r"/portal/invitation/\S+", email.body)[0]

        browser = desk.context.browser
        patient_context = browser.new_context(**PHONE)
        patient = patient_context.new_page()
        patient.goto(invitation_url)
        patient.wait_for_url("**/portal/invitation/")
        patient.get_by_label("Your date of birth").fill("1970-01-01")
        patient.get_by_role("button", name="Continue").click()
        patient.get_by_label("Choose a password").fill("a long patient passphrase 42")
        patient.get_by_label("The password again").fill("a long patient passphrase 42")
        patient.get_by_role("button", name="Create account").click()
        patient.wait_for_url("**/t/north/my/")
        assert patient.evaluate(NO_SIDEWAYS_SCROLL)
        assert patient.locator(".study-card").count() == 1
        screenshot(patient, "portal-2-patient-phone-studies")

        patient.get_by_role("link", name="Chest CT").click()
        # The click returns once the study page starts loading; wait for it to be there.
        patient.get_by_role("heading", name="Who accessed these images").wait_for()
        assert patient.evaluate(NO_SIDEWAYS_SCROLL)
        # Script in the name is shown as text.
        assert "<script>" in patient.locator(".details").inner_text()
        screenshot(patient, "portal-3-patient-study")
        patient.get_by_role("link", name="View images").click()
        patient.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        assert patient.locator("#viewer").get_attribute("data-slices") == "12"
        patient.go_back()

        patient.get_by_role("link", name="Share with a doctor…").click()
        patient.get_by_label("PIN (4 to 12 digits)").fill("8642")
        patient.get_by_role("button", name="Create link").click()
        share_url = patient.locator("#share-url").input_value()
        assert "/s/" in share_url

        recipient_context = browser.new_context(**PHONE)
        recipient = recipient_context.new_page()
        recipient.goto(share_url)
        recipient.wait_for_url("**/s/")
        recipient.get_by_label("PIN").fill("8642")
        recipient.get_by_role("button", name="Open").click()
        recipient.get_by_role("link", name="Open viewer").click()
        recipient.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        assert recipient.locator("#viewer").get_attribute("data-slices") == "12"
        assert recipient.evaluate(METADATA_STATUS) == 200
        screenshot(recipient, "portal-4-recipient-phone")

        patient.get_by_role("link", name="Back to the study").click()
        patient.locator("#my-links ~ .table-wrap").get_by_role("button", name="Revoke").click()
        patient.wait_for_selector("text=The link is revoked")
        screenshot(patient, "portal-5-patient-revoked")

        assert recipient.evaluate(METADATA_STATUS) == 404
        with recipient.expect_navigation():
            recipient.get_by_role("link", name="← Study").click()
        assert recipient.get_by_role("heading", name="This link does not work").is_visible()
        screenshot(recipient, "portal-6-recipient-after-revoke")
        recipient_context.close()
        patient_context.close()
