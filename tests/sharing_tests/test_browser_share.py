"""Real browser: a radiologist shares a study; the recipient opens it on a phone with
the PIN and sees the image; the sharer revokes; the recipient's next action fails."""

from __future__ import annotations

import pytest
from django.utils import timezone

from sharing.models import ShareLink
from sharing.services import share_create
from tests.browser import SHARE_METADATA_STATUS as METADATA_STATUS
from tests.browser import browser_page, require_chromium, screenshot, sign_in
from tests.helpers import TEST_ACTOR, make_clinic, make_member, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_share_open_on_a_phone_with_pin_then_revoke(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(
        clinic, synthetic_ct(slices=20, size=64, tags={"PixelSpacing": [0.5, 0.5]})
    )

    with browser_page() as sharer:
        sign_in(sharer, live_server.url, radiologist, f"/t/north/studies/{study.pk}/")
        sharer.get_by_role("link", name="Share…").click()
        sharer.get_by_label("PIN (4 to 12 digits)").fill("8642")
        sharer.get_by_label("Maximum number of openings").fill("3")
        sharer.get_by_role("button", name="Create link").click()
        url = sharer.locator("#share-url").input_value()
        assert "/s/" in url
        screenshot(sharer, "share-1-created")

        phone_context = sharer.context.browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        )
        phone = phone_context.new_page()
        phone.goto(url)
        phone.wait_for_url("**/s/")
        assert phone.url.removeprefix(live_server.url) == "/s/"
        phone.get_by_label("PIN").fill("8642")
        phone.get_by_role("button", name="Open").click()
        phone.get_by_role("link", name="Open viewer").click()
        phone.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        assert phone.locator("#viewer").get_attribute("data-slices") == "20"
        screenshot(phone, "share-2-recipient-phone")
        assert phone.evaluate(METADATA_STATUS) == 200

        sharer.get_by_role("link", name="Manage this link").click()
        sharer.get_by_role("button", name="Revoke now").click()
        sharer.wait_for_selector("text=The link is revoked")
        screenshot(sharer, "share-3-revoked")

        # The next request of the open viewer is refused (frames, metadata, pages).
        assert phone.evaluate(METADATA_STATUS) == 404
        with phone.expect_navigation():
            phone.get_by_role("link", name="← Study").click()
        assert phone.get_by_role("heading", name="This link does not work").is_visible()
        screenshot(phone, "share-4-recipient-after-revoke")
        phone_context.close()


# The button pressed twice, at once and 50 ms apart (the second after the first request
# reached the server, before its answer came back).
SECOND_PRESS = """(gap) => {
  const button = document.querySelector("main form[method=post] button[type=submit]");
  button.click();
  setTimeout(() => button.click(), gap);
}"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("pin", "gap"), [(None, 0), (None, 50), ("8642", 0), ("8642", 50)])
def test_open_pressed_twice_spends_one_use_and_shows_the_images(live_server, pin, gap):
    # Without the guard the second submission, sent with the cookie the first one
    # replaced, finds its session gone or the last use spent, and its error page
    # replaces the images the first one opened.
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, synthetic_ct(slices=2, size=16))
    share, token = share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(radiologist, clinic),
        challenge=ShareLink.Challenge.PIN if pin else ShareLink.Challenge.NONE,
        pin=pin,
        max_uses=1,
    )

    with browser_page() as page:
        page.goto(f"{live_server.url}/s/{token}")
        page.wait_for_url("**/s/")
        if pin:
            page.get_by_label("PIN").fill(pin)
        page.evaluate(SECOND_PRESS, gap)

        page.get_by_role("link", name="Open viewer").wait_for(timeout=10_000)
        page.wait_for_timeout(300)  # anything a second submission would bring
        assert page.get_by_role("link", name="Open viewer").is_visible()
    share.refresh_from_db()
    assert share.use_count == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_create_link_pressed_twice_makes_one_link(live_server):
    # A second link would be live, and never shown to anyone.
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, synthetic_ct(slices=2, size=16))

    with browser_page() as page:
        sign_in(page, live_server.url, radiologist, f"/t/north/studies/{study.pk}/share/")
        page.get_by_label("PIN (4 to 12 digits)").fill("8642")
        page.evaluate(SECOND_PRESS, 0)

        page.locator("#share-url").wait_for(timeout=10_000)
        page.wait_for_timeout(300)
        assert "/s/" in page.locator("#share-url").input_value()
    assert ShareLink.objects.for_tenant(clinic).filter(study=study).count() == 1
