"""Mail link scanners GET every URL of a message and follow its redirects: no GET of a
share link spends a use or shows the study; the recipient's POST (the Open button of a
link without a challenge, or the PIN / birth date answer) does."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import Action, ActorType, AuditEvent
from sharing.models import ShareLink
from sharing.services import share_create, share_revoke
from tests.helpers import TEST_ACTOR, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

OPEN_BUTTON = "Open the shared images"
MESSAGE = "Jane's knee, as discussed on the phone"


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=2, size=16, patient_name="Doe^Jane"))


@pytest.fixture
def other_study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))


def open_link(study, user, **options) -> tuple[ShareLink, str]:
    """A link without a challenge, one use unless told otherwise."""
    options.setdefault("max_uses", 1)
    options.setdefault("challenge", ShareLink.Challenge.NONE)
    return share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(user, study.tenant),
        message=MESSAGE,
        **options,
    )


def uses(share: ShareLink) -> int:
    share.refresh_from_db()
    return share.use_count


def share_events(share: ShareLink, action: str) -> int:
    return (
        AuditEvent.objects.for_tenant(share.tenant)
        .filter(actor_type=ActorType.SHARE_LINK, actor_id=str(share.pk), action=action)
        .count()
    )


# --- The scanner and the recipient ----------------------------------------------------------


def test_a_scanner_following_the_link_spends_nothing_and_the_recipient_still_opens_it(
    study, radiologist
):
    share, token = open_link(study, radiologist)
    scanner = Client(REMOTE_ADDR="192.0.2.10")

    scanned = scanner.get(f"/s/{token}", follow=True)
    rescanned = scanner.get("/s/")
    spent_by_scanner = uses(share)
    recipient = Client(REMOTE_ADDR="198.51.100.20")
    recipient.get(f"/s/{token}")
    opened = recipient.post("/s/")
    page = recipient.get("/s/")

    assert scanned.redirect_chain == [("/s/", 303)]
    for response in (scanned, rescanned):
        body = response.content.decode()
        assert response.status_code == 200
        assert OPEN_BUTTON in body and 'method="post"' in body
    assert spent_by_scanner == 0
    assert (opened.status_code, opened["Location"]) == (303, "/s/")
    assert page.status_code == 200 and "Doe, Jane" in page.content.decode()
    assert uses(share) == 1


def test_the_open_page_shows_nothing_of_the_study(study, radiologist):
    share, token = open_link(study, radiologist)
    client = Client()
    client.get(f"/s/{token}")

    body = client.get("/s/").content.decode()

    assert study.tenant.name in body  # who sent it, as on the PIN page
    for detail in ("Doe", "Jane", study.patient.patient_id, "Series", MESSAGE):
        assert detail not in body, detail
    assert study.description  # the fixture's study has one, so its absence means something
    assert study.description not in body
    assert share_events(share, Action.STUDY_VIEWED) == 0


def test_the_opening_is_audited_on_the_post_not_on_the_get(study, radiologist):
    share, token = open_link(study, radiologist)
    client = Client()
    client.get(f"/s/{token}", follow=True)
    before = share_events(share, Action.SHARE_OPENED)

    client.post("/s/")
    client.get("/s/")

    assert before == 0
    opened = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_OPENED)
    assert opened.actor_id == str(share.pk) and opened.detail == {
        "share": str(share.pk),
        "first": True,
    }
    assert share_events(share, Action.STUDY_VIEWED) == 1


def test_an_unknown_token_is_still_audited_on_the_get(db):
    response = Client(REMOTE_ADDR="203.0.113.7").get("/s/" + "F" * 43)

    assert response.status_code == 404
    assert response["Referrer-Policy"] == "no-referrer"
    refused = AuditEvent.objects.unscoped(reason="the platform chain").get(
        tenant=None, action=Action.SHARE_REFUSED
    )
    assert refused.detail == {"state": "unknown"} and refused.actor_ip == "203.0.113.7"


def test_a_second_post_and_reloads_spend_no_more_uses(study, radiologist):
    share, token = open_link(study, radiologist, max_uses=2)
    client = Client()
    client.get(f"/s/{token}")

    first = client.post("/s/")
    again = client.post("/s/")  # a double click
    client.get("/s/")
    client.get("/s/viewer/")

    assert first.status_code == 303 and again.status_code == 200
    assert uses(share) == 1


def test_clicking_the_emailed_link_again_in_the_same_browser_spends_nothing(study, radiologist):
    share, token = open_link(study, radiologist)  # one use
    client = Client()
    client.get(f"/s/{token}")
    client.post("/s/")
    session_key = client.session.session_key

    again = client.get(f"/s/{token}", follow=True)

    assert again.status_code == 200 and "Doe, Jane" in again.content.decode()
    assert uses(share) == 1
    assert client.session.session_key == session_key  # the same session, not begun again


def test_the_open_button_needs_the_csrf_token(study, radiologist):
    share, token = open_link(study, radiologist)
    client = Client(enforce_csrf_checks=True)
    client.get(f"/s/{token}")
    page = client.get("/s/").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]

    forged = client.post("/s/")
    spent_by_forgery = uses(share)
    opened = client.post("/s/", {"csrfmiddlewaretoken": csrf})

    assert forged.status_code == 403 and spent_by_forgery == 0
    assert opened.status_code == 303 and uses(share) == 1


# --- Refusals between the GET and the POST --------------------------------------------------


def test_a_post_without_a_link_in_the_session_is_not_found(study, radiologist):
    share, _ = open_link(study, radiologist)

    response = Client().post("/s/")

    assert response.status_code == 404
    assert "This link does not work" in response.content.decode()
    assert uses(share) == 0


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [("expire", 410, "This link has expired"), ("revoke", 404, "This link does not work")],
)
def test_a_link_ended_between_get_and_post_is_refused_and_spends_nothing(
    study, radiologist, change, status, text
):
    share, token = open_link(study, radiologist)
    client = Client()
    client.get(f"/s/{token}")
    if change == "revoke":
        share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())
    else:
        ShareLink.objects.for_tenant(study.tenant).filter(pk=share.pk).update(
            created_at=timezone.now() - dt.timedelta(days=1),
            expires_at=timezone.now() - dt.timedelta(seconds=1),
        )

    response = client.post("/s/")

    assert response.status_code == status and text in response.content.decode()
    assert uses(share) == 0
    assert share_events(share, Action.SHARE_OPENED) == 0
    assert share_events(share, Action.SHARE_REFUSED) == 1
    assert client.get("/s/").status_code == 404  # the session let go of the link


def test_the_last_use_spent_meanwhile_gives_the_gone_page(study, radiologist):
    share, token = open_link(study, radiologist)
    late = Client()
    late.get(f"/s/{token}")
    first = Client()
    first.get(f"/s/{token}")
    first.post("/s/")

    response = late.post("/s/")

    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()
    assert uses(share) == 1
    assert "Doe, Jane" in first.get("/s/").content.decode()


@pytest.mark.parametrize("challenge", [ShareLink.Challenge.NONE, ShareLink.Challenge.PIN])
def test_a_used_up_link_says_so_at_once_not_after_the_button_or_pin(study, radiologist, challenge):
    pin = "4711" if challenge == ShareLink.Challenge.PIN else None
    share, token = open_link(study, radiologist, challenge=challenge, pin=pin)
    first = Client()
    first.get(f"/s/{token}")
    first.post("/s/", {"answer": "4711"})

    response = Client().get(f"/s/{token}", follow=True)

    page = response.content.decode()
    assert response.status_code == 410
    assert "opened as many times as the sender allowed" in page
    assert OPEN_BUTTON not in page and "PIN" not in page
    assert share_events(share, Action.SHARE_REFUSED) == 1
    assert "Doe, Jane" in first.get("/s/").content.decode()  # who spent it still sees it


# --- One link's session, not another's ------------------------------------------------------


def test_a_session_for_one_link_cannot_open_another(study, other_study, radiologist):
    mine, my_token = open_link(study, radiologist)
    other, other_token = open_link(other_study, radiologist)
    client = Client()
    client.get(f"/s/{my_token}")

    # Naming the other link in the form changes nothing: the session names the link.
    opened = client.post("/s/", {"share": str(other.pk), "token": other_token})
    page = client.get("/s/").content.decode()

    assert opened.status_code == 303
    assert "Doe, Jane" in page and "Roe" not in page
    assert (uses(mine), uses(other)) == (1, 0)


def test_a_verified_session_does_not_carry_over_to_the_next_link(study, other_study, radiologist):
    mine, my_token = open_link(study, radiologist)
    other, other_token = open_link(other_study, radiologist)
    client = Client()
    client.get(f"/s/{my_token}")
    client.post("/s/")

    asked = client.get(f"/s/{other_token}")  # e.g. a second link in the same email, scanned
    held = client.get("/s/").content.decode()
    client.post(f"/s/{other_token}")  # the recipient chose to open it instead
    page = client.get("/s/").content.decode()
    viewer = client.get("/s/viewer/")

    assert asked.status_code == 200 and "Roe" not in asked.content.decode()
    assert "Doe" in held and "Roe" not in held  # the link opened stays open
    assert OPEN_BUTTON in page and "Doe" not in page and "Roe" not in page
    assert (viewer.status_code, viewer["Location"]) == (302, "/s/")
    assert (uses(mine), uses(other)) == (1, 0)


# --- Links with a challenge keep theirs -----------------------------------------------------


def test_a_pin_link_shows_its_challenge_and_no_open_button(study, radiologist):
    share, token = share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(radiologist, study.tenant),
        pin="4711",
        max_uses=1,
    )
    client = Client()
    client.get(f"/s/{token}", follow=True)

    empty = client.post("/s/")
    spent_without_answer = uses(share)
    right = client.post("/s/", {"answer": "4711"})

    assert empty.status_code == 400 and OPEN_BUTTON not in empty.content.decode()
    assert "Enter the PIN" in empty.content.decode() and spent_without_answer == 0
    assert right.status_code == 303 and uses(share) == 1


# --- In a real browser ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_in_a_browser_the_scanner_spends_nothing_and_the_recipient_clicks_open(live_server):
    from tests.browser import browser_page, require_chromium, screenshot
    from tests.helpers import make_clinic, make_member

    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, synthetic_ct(slices=3, size=32, patient_name="Doe^Jane"))
    share, token = open_link(study, radiologist)
    url = f"{live_server.url}/s/{token}"

    with browser_page(width=390, height=844) as scanner:
        scanner.goto(url)
        scanner.wait_for_url("**/s/")
        assert scanner.get_by_role("button", name=OPEN_BUTTON).is_visible()
        assert "Doe" not in scanner.content()
        screenshot(scanner, "share-5-open-button")
        spent_by_scanner = uses(share)

        recipient = scanner.context.browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        ).new_page()
        recipient.goto(url)
        recipient.wait_for_url("**/s/")
        recipient.get_by_role("button", name=OPEN_BUTTON).click()
        recipient.get_by_role("link", name="Open viewer").wait_for()
        assert recipient.url.removeprefix(live_server.url) == "/s/"
        assert "Doe, Jane" in recipient.content()
        screenshot(recipient, "share-6-opened-after-click")
        recipient.context.close()

    assert spent_by_scanner == 0
    assert uses(share) == 1
