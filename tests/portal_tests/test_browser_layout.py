"""Real browser: what staff act on can be seen, and pages fit a phone's width."""

from __future__ import annotations

import pytest
from django.utils import timezone

from imaging.services import study_grant
from sharing.services import share_create
from tests.browser import browser_page, require_chromium, sign_in
from tests.helpers import TEST_ACTOR, make_clinic, make_member, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

# Each link-styled button's text colour, and the colour behind it (the first ancestor
# with a background), as the browser computes them.
LINK_BUTTONS = """() => [...document.querySelectorAll("main button.link")].map((button) => {
  let behind = button;
  let background = getComputedStyle(behind).backgroundColor;
  while (behind && (background === "rgba(0, 0, 0, 0)" || background === "transparent")) {
    behind = behind.parentElement;
    background = behind ? getComputedStyle(behind).backgroundColor : "rgb(255, 255, 255)";
  }
  return [button.textContent.trim(), getComputedStyle(button).color, background];
})"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_link_buttons_show_and_pages_fit_a_phone(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    officer = make_member(clinic, "radiologist", "privacy_officer", email="po@north.example")
    referrer = make_member(
        clinic, "referring_physician", email="a.very.long.address.for.a.referrer@north.example"
    )
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    study_grant(study=study, grantee=referrer, download=False, actor=TEST_ACTOR)
    share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        challenge="pin",
        pin="8642",
        recipient_email="someone.with.a.long.address@example.org",
        **sharer(officer, clinic),
    )
    pages = ["/t/north/shares/", f"/t/north/studies/{study.pk}/", "/t/north/audit/"]

    with browser_page(width=375, height=800) as page:
        sign_in(page, live_server.url, officer, "/t/north/shares/live/")
        found = {}
        for path in [*pages, "/t/north/shares/live/"]:
            page.goto(live_server.url + path)
            found[path] = (page.evaluate(LINK_BUTTONS), page.evaluate(OVERFLOW))

    for path, (buttons, overflow) in found.items():
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 375px"
        for text, colour, background in buttons:
            assert colour != background, f"{text!r} on {path} is {colour} on {background}"
    assert any(buttons for buttons, _ in found.values())  # the pages had such buttons
