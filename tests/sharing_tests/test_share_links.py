"""Share links: token swap, challenge, expiry, revocation, use limits, scope, audit."""

from __future__ import annotations

import datetime as dt
import logging
import re
import statistics
import threading
import time

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from audit.models import Action, ActorType, AuditEvent
from imaging.models import Instance, Series, Study
from imaging.services import study_set_confidential
from sharing.forms import ShareForm
from sharing.models import ShareLink
from sharing.services import (
    DOWNLOAD_NOT_YOURS,
    ShareInvalid,
    ShareUnavailable,
    share_create,
    share_revoke,
    share_use,
)
from tests.helpers import TEST_ACTOR, make_member, response_bytes, sharer
from tests.imaging_tests.helpers import ingest, ingest_study, synthetic_ct, with_large_values

FRAMES = 'multipart/related; type="application/octet-stream"'
PIN = "4711"


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=3, size=32, patient_name="Doe^Jane"))


@pytest.fixture
def other_study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))


def make_share(study, radiologist, **options):
    creator = sharer(radiologist, study.tenant) if radiologist is not None else {}
    options.setdefault("challenge", ShareLink.Challenge.PIN)
    if options["challenge"] == ShareLink.Challenge.PIN:
        options.setdefault("pin", PIN)
    return share_create(study=study, actor=TEST_ACTOR, now=timezone.now(), **creator, **options)


def open_link(client: Client, token: str, pin: str | None = PIN):
    response = client.get(f"/s/{token}")
    if response.status_code == 303 and pin is not None:
        client.post("/s/", {"answer": pin})
    return response


def frame_url(instance: Instance) -> str:
    return (
        f"/s/dicomweb/studies/{instance.study.study_uid}/series/{instance.series.series_uid}"
        f"/instances/{instance.sop_instance_uid}/frames/1"
    )


def first_instance(study) -> Instance:
    return (
        Instance.objects.for_tenant(study.tenant)
        .filter(study=study)
        .select_related("study", "series")
        .first()
    )


# --- Token, swap and challenge -----------------------------------------------------------


def test_token_is_stored_only_as_a_hash(study, radiologist):
    share, token = make_share(study, radiologist)

    assert len(token) >= 43  # 256 bits, urlsafe base64
    assert token not in str(ShareLink.objects.for_tenant(study.tenant).values().get(pk=share.pk))


def test_first_visit_swaps_the_token_for_a_session_and_drops_it_from_the_url(
    client, study, radiologist
):
    _, token = make_share(study, radiologist)

    response = client.get(f"/s/{token}")

    assert response.status_code == 303
    assert response["Location"] == "/s/"
    assert response["Referrer-Policy"] == "no-referrer"
    assert token not in response["Location"]
    assert client.cookies["portal_session"].value


def test_pin_first_then_the_study(client, study, radiologist):
    _, token = make_share(study, radiologist)
    client.get(f"/s/{token}")

    challenge = client.get("/s/")
    wrong = client.post("/s/", {"answer": "0000"})
    right = client.post("/s/", {"answer": PIN})
    page = client.get("/s/")

    assert "Enter the PIN" in challenge.content.decode()
    assert wrong.status_code == 400 and "not right" in wrong.content.decode()
    assert right.status_code == 303
    assert "Doe, Jane" in page.content.decode()


def test_birth_date_challenge(client, study, radiologist):
    _, token = make_share(study, radiologist, challenge=ShareLink.Challenge.BIRTH_DATE)

    open_link(client, token, pin="1970-01-01")

    assert "Doe, Jane" in client.get("/s/").content.decode()


def test_a_birth_date_written_another_way_is_a_slip_not_a_miss(client, study, radiologist):
    share, token = make_share(study, radiologist, challenge=ShareLink.Challenge.BIRTH_DATE)
    client.get(f"/s/{token}")
    page = client.get("/s/")

    slips = [client.post("/s/", {"answer": "01/01/1970"}) for _ in range(6)]
    right = client.post("/s/", {"answer": "1970-01-01"})

    assert 'type="date"' in page.content.decode()
    assert {slip.status_code for slip in slips} == {400}
    assert "year-month-day" in slips[-1].content.decode()
    share.refresh_from_db()
    assert share.failed_attempts == 0 and share.locked_at is None  # none counted
    assert right.status_code == 303


def test_a_deidentified_link_cannot_ask_for_the_birth_date(study, radiologist):
    with pytest.raises(ShareInvalid, match="use a PIN"):
        make_share(study, radiologist, deidentify=True, challenge=ShareLink.Challenge.BIRTH_DATE)

    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_pin_lockout_after_five_misses_tells_the_sharer_once(
    client, study, radiologist, django_capture_on_commit_callbacks
):
    _share, token = make_share(study, radiologist)
    client.get(f"/s/{token}")

    with django_capture_on_commit_callbacks(execute=True):
        answers = [client.post("/s/", {"answer": f"000{i}"}).status_code for i in range(5)]
    after = client.post("/s/", {"answer": PIN})

    assert answers == [400, 400, 400, 400, 403]
    assert after.status_code in (403, 404)
    assert Client().get(f"/s/{token}").status_code == 403  # the right PIN no longer helps
    assert [m.to for m in mail.outbox] == [[radiologist.email]]
    assert "locked" in mail.outbox[0].subject


def test_unknown_token_is_a_404(client, db):
    response = client.get("/s/" + "A" * 43)

    assert response.status_code == 404
    assert "This link does not work" in response.content.decode()


def test_expired_link_is_a_410(client, study, radiologist):
    share, token = make_share(study, radiologist)
    ShareLink.objects.for_tenant(study.tenant).filter(pk=share.pk).update(
        created_at=timezone.now() - dt.timedelta(days=3),
        expires_at=timezone.now() - dt.timedelta(seconds=1),
    )

    response = client.get(f"/s/{token}")

    assert response.status_code == 410
    assert "expired" in response.content.decode()


def test_revoked_link_is_the_same_404_as_an_unknown_one(client, study, radiologist):
    share, token = make_share(study, radiologist)
    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())

    revoked = client.get(f"/s/{token}")
    unknown = client.get("/s/" + "B" * 43)

    assert revoked.status_code == unknown.status_code == 404
    assert revoked.content == unknown.content


def test_an_open_viewer_learns_the_link_was_revoked(client, study, radiologist):
    share, token = make_share(study, radiologist)
    open_link(client, token)
    url = f"/s/dicomweb/studies/{study.study_uid}/access"

    before = client.get(url).status_code
    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())
    after = client.get(url).status_code

    assert (before, after) == (204, 404)


def test_unknown_expired_and_revoked_tokens_take_the_same_time(study, radiologist):
    expired, expired_token = make_share(study, radiologist)
    ShareLink.objects.for_tenant(study.tenant).filter(pk=expired.pk).update(
        created_at=timezone.now() - dt.timedelta(days=3),
        expires_at=timezone.now() - dt.timedelta(seconds=1),
    )
    revoked, revoked_token = make_share(study, radiologist)
    share_revoke(share=revoked, actor=TEST_ACTOR, now=timezone.now())

    def median_ms(token: str) -> float:
        samples = []
        for _ in range(15):
            client = Client(REMOTE_ADDR=f"10.0.{len(samples)}.1")  # stay under the rate limit
            start = time.perf_counter()
            client.get(f"/s/{token}")
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    timings = [median_ms("C" * 43), median_ms(expired_token), median_ms(revoked_token)]

    assert max(timings) < 2.0 * min(timings) + 2.0, timings


def test_token_guessing_is_rate_limited_per_address(client, db, monkeypatch):
    from types import SimpleNamespace

    from django.utils import timezone

    # Counted per minute: all in one, however slow the machine (no minute boundary).
    now = timezone.now()
    monkeypatch.setattr("tenants.throttle.timezone", SimpleNamespace(now=lambda: now))

    statuses = [client.get(f"/s/{'D' * 42}{i % 10}").status_code for i in range(25)]

    assert statuses[:20] == [404] * 20
    assert set(statuses[20:]) == {429}


def test_tokens_never_reach_the_logs(client, study, radiologist, caplog):
    _, token = make_share(study, radiologist)
    logger = logging.getLogger("django.server")
    from portal.logredact import RedactShareTokens

    record = logger.makeRecord(
        "django.server", logging.INFO, __file__, 1, '"GET /s/%s HTTP/1.1" 303', (token,), None
    )
    RedactShareTokens().filter(record)

    with caplog.at_level(logging.DEBUG):
        client.get(f"/s/{token}")
        client.get("/s/" + "E" * 43)

    assert token not in record.getMessage() and "/s/[redacted]" in record.getMessage()
    assert token not in caplog.text and "E" * 43 not in caplog.text


# --- Use limits -----------------------------------------------------------------------------


def test_use_limit_counts_openings(study, radiologist):
    _, token = make_share(study, radiologist, max_uses=2)

    statuses = [open_link(Client(), token).status_code for _ in range(3)]

    assert statuses == [303, 303, 303]  # the challenge comes before the use is spent
    final = Client()
    final.get(f"/s/{token}")
    assert final.post("/s/", {"answer": PIN}).status_code == 410


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_use_limit_holds_under_concurrent_requests(clinic, radiologist):
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    share, _ = make_share(study, radiologist, challenge=ShareLink.Challenge.NONE, max_uses=3)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        from django.db import connection

        barrier.wait()
        try:
            share_use(share=share, now=timezone.now(), ip=None)
            outcomes.append("used")
        except ShareUnavailable:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    share.refresh_from_db()
    assert outcomes.count("used") == 3 and share.use_count == 3


# --- Scope and revocation -------------------------------------------------------------------


def test_recipient_views_frames_of_the_shared_study(client, study, radiologist):
    _, token = make_share(study, radiologist)
    open_link(client, token)

    response = client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES)

    assert response.status_code == 200


def test_revocation_stops_the_next_frame_request_of_an_open_viewer(client, study, radiologist):
    share, token = make_share(study, radiologist)
    open_link(client, token)
    viewer = client.get("/s/viewer/")
    before = client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES)

    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())
    after = client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES)

    assert viewer.status_code == 200 and before.status_code == 200
    assert after.status_code == 404


def test_suspending_the_clinic_ends_open_recipient_sessions(client, study, radiologist):
    _, token = make_share(study, radiologist, allow_download=True)
    open_link(client, token)
    before = client.get("/s/")

    study.tenant.status = study.tenant.Status.SUSPENDED
    study.tenant.save()
    after = [
        client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES),
        client.get("/s/download/"),
        client.get("/s/"),
    ]

    assert before.status_code == 200
    assert [response.status_code for response in after] == [404, 404, 404]


def test_scope_excludes_other_studies_series_searches_and_the_partner_root(
    client, clinic, study, other_study, radiologist
):
    extra_series = synthetic_ct(slices=1, size=16, study_uid=study.study_uid)
    ingest(clinic, extra_series[0])
    series = list(Series.objects.for_tenant(clinic).filter(study=study).order_by("created_at"))
    _, token = make_share(study, radiologist, series=[series[0]])
    open_link(client, token)
    outside_series = (
        Instance.objects.for_tenant(clinic)
        .filter(series=series[1])
        .select_related("study", "series")
        .get()
    )
    inside_series = (
        Instance.objects.for_tenant(clinic)
        .filter(series=series[0])
        .select_related("study", "series")
        .first()
    )
    uid = study.study_uid

    assert client.get(frame_url(inside_series), HTTP_ACCEPT=FRAMES).status_code == 200
    assert client.get(frame_url(first_instance(other_study)), HTTP_ACCEPT=FRAMES).status_code == 404
    assert client.get(frame_url(outside_series), HTTP_ACCEPT=FRAMES).status_code == 404
    for search in (
        "/s/dicomweb/studies",
        f"/s/dicomweb/studies/{uid}/series",
        "/s/dicomweb/instances",
    ):
        assert client.get(search).status_code == 404, search
    assert client.get(f"/s/dicomweb/studies/{uid}").status_code == 404  # no download allowed
    assert client.get(f"/dicomweb/studies/{uid}/metadata").status_code == 401
    assert client.get(f"/t/{clinic.slug}/").status_code == 302  # sign-in page
    assert client.get(f"/t/{clinic.slug}/dicomweb/studies").status_code == 401


def test_view_only_link_cannot_download(client, study, radiologist):
    _, token = make_share(study, radiologist)
    open_link(client, token)

    assert client.get("/s/download/").status_code == 403


@pytest.mark.parametrize("role", ["technologist", "front_desk"])
def test_a_link_allows_download_only_if_its_maker_may_download(role, clinic, study):
    member = make_member(clinic, role)  # sees the study, may not download it

    with pytest.raises(ShareInvalid, match=DOWNLOAD_NOT_YOURS):
        make_share(study, member, allow_download=True)

    assert not ShareLink.objects.for_tenant(clinic).exists()
    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.SHARE_CREATED).exists()


def test_the_share_form_offers_download_only_to_who_may_download():
    posted = {"expires_days": 3, "challenge": "pin", "pin": PIN, "allow_download": "on"}
    offered = ShareForm(posted, series=[], max_days=30)
    withheld = ShareForm(posted, series=[], max_days=30, may_download=False)

    assert offered.is_valid() and offered.cleaned_data["allow_download"] is True
    assert withheld.is_valid() and "allow_download" not in withheld.cleaned_data
    assert "allow_download" not in withheld.as_div()


@pytest.mark.parametrize(("allow_download", "status"), [(False, 404), (True, 200)])
def test_bulk_data_is_a_download(client, study, radiologist, allow_download, status):
    _, token = make_share(study, radiologist, allow_download=allow_download)
    open_link(client, token)
    bulk = frame_url(first_instance(study)).replace("/frames/1", "/bulkdata/7FE00010")

    response = client.get(bulk, HTTP_ACCEPT=FRAMES)

    assert response.status_code == status


def test_deidentified_download_link_serves_pixels_but_no_private_bulk_data(
    client, clinic, radiologist
):
    data = with_large_values(synthetic_ct(slices=1, size=16, patient_name="Doe^Jane")[0])
    ingest(clinic, data)
    study = Study.objects.for_tenant(clinic).get()
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    instance = frame_url(first_instance(study)).removesuffix("/frames/1")

    metadata = client.get(f"{instance}/metadata").json()[0]
    private = client.get(f"{instance}/bulkdata/00091010", HTTP_ACCEPT=FRAMES)
    pixels = client.get(f"{instance}/bulkdata/7FE00010", HTTP_ACCEPT=FRAMES)

    assert "00091010" not in metadata and metadata["7FE00010"]["BulkDataURI"]
    assert private.status_code == 404
    assert pixels.status_code == 200 and b"Doe^Jane" not in response_bytes(pixels)


def _jpeg_with_a_comment(text: bytes) -> bytes:
    """A JPEG baseline file whose bitstream carries `text` in a COM segment, which
    de-identifying the data set never sees."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from tests.imaging_tests.helpers import sample_bytes

    ds = pydicom.dcmread(io.BytesIO(sample_bytes("SC_rgb_jpeg_dcmtk.dcm")))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    comment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    ds.PixelData = encapsulate([frame[:2] + comment + frame[2:]])
    ds.PatientName = "Doe^Jane"
    ds.BurnedInAnnotation = "NO"  # no text in the picture: de-identified links serve it
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("deidentify", [True, False])
def test_frames_go_as_stored_only_through_identified_links(deidentify, client, clinic, radiologist):
    ingest(clinic, _jpeg_with_a_comment(b"Patient Doe^Jane MRN 123456"))
    study = Study.objects.for_tenant(clinic).get()
    _, token = make_share(study, radiologist, deidentify=deidentify)
    open_link(client, token)
    url = frame_url(first_instance(study))

    as_stored = client.get(
        url, HTTP_ACCEPT='multipart/related; type="image/jpeg"; transfer-syntax=*'
    )
    decoded = client.get(url, HTTP_ACCEPT=FRAMES)

    assert decoded.status_code == 200 and b"Doe^Jane" not in response_bytes(decoded)
    if deidentify:
        assert as_stored.status_code == 406
        assert "decoded" in as_stored.json()["error"]
    else:
        assert as_stored.status_code == 200 and b"Doe^Jane" in response_bytes(as_stored)


def test_download_link_downloads_and_is_audited(client, study, radiologist):
    share, token = make_share(study, radiologist, allow_download=True)
    open_link(client, token)

    response = client.get("/s/download/")

    assert response.status_code == 200
    assert int(response["Content-Length"]) == len(b"".join(response.streaming_content))
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_DOWNLOADED)
    assert event.actor_type == ActorType.SHARE_LINK and event.detail["share"] == str(share.pk)


def test_deidentified_link_hides_identity_in_pages_and_metadata(client, study, radiologist):
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    instance = first_instance(study)

    page = client.get("/s/").content.decode()
    viewer = client.get("/s/viewer/").content.decode()
    metadata = client.get(
        f"/s/dicomweb/studies/{study.study_uid}/series/{instance.series.series_uid}/metadata"
    ).json()
    archive = b"".join(client.get("/s/download/").streaming_content)

    assert "Doe" not in page and "Doe" not in viewer and "SYN-0001" not in viewer
    assert metadata[0]["00100010"]["Value"][0]["Alphabetic"] == "ANONYMOUS"
    assert "Value" not in metadata[0].get("00100030", {})  # birth date: empty (Z)
    assert b"Doe^Jane" not in archive and b"SYN-0001" not in archive


def test_a_deidentified_study_past_the_prepare_ahead_budget_streams_deidentified(
    client, study, radiologist, monkeypatch
):
    from imaging.dicomweb.views import wado

    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    url = f"/s/dicomweb/studies/{study.study_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    monkeypatch.setattr(wado, "PREPARE_AHEAD_BYTES", 0)

    streamed = client.get(url, HTTP_ACCEPT=accept)
    body = b"".join(streamed.streaming_content)
    monkeypatch.setattr(wado, "MAX_PREPARED_BYTES", 1)
    too_large = client.get(url, HTTP_ACCEPT=accept)

    assert streamed.status_code == 200 and "Content-Length" not in streamed
    assert body.count(b"DICM") == 3 and b"Doe^Jane" not in body and b"ANONYMOUS" in body
    assert too_large.status_code == 406
    assert "too large to de-identify at once" in too_large.json()["error"]


def test_every_recipient_access_is_audited_with_the_share_id(client, study, radiologist):
    share, token = make_share(study, radiologist)
    open_link(client, token)
    client.get("/s/")
    client.get("/s/viewer/")
    client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES)

    events = AuditEvent.objects.for_tenant(study.tenant).filter(
        actor_type=ActorType.SHARE_LINK, actor_id=str(share.pk)
    )
    actions = set(events.values_list("action", flat=True))

    assert {Action.SHARE_OPENED, Action.STUDY_VIEWED, Action.VIEWER_OPENED} <= actions
    assert Action.DICOMWEB_RETRIEVE in actions or Action.SERIES_VIEWED in actions
    assert all(
        e.detail.get("share") == str(share.pk)
        or e.action in (Action.SERIES_VIEWED, Action.DICOMWEB_RETRIEVE)
        for e in events
    )


def test_invitation_email_is_sent_once_after_commit_and_forgets_the_token(
    study, radiologist, django_capture_on_commit_callbacks
):
    from sharing.tasks import share_invitation_send

    with django_capture_on_commit_callbacks(execute=True):
        share, token = make_share(study, radiologist, recipient_email="doctor@example.org")
    share_invitation_send.delay(share_id=str(share.pk))  # a duplicate message

    share.refresh_from_db()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["doctor@example.org"]
    assert f"/s/{token}" in mail.outbox[0].body and PIN not in mail.outbox[0].body
    assert "Doe" not in mail.outbox[0].body
    assert share.invitation_token_wrapped is None
    # The email is on the record once, as the link it carried.
    (emailed,) = AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.SHARE_EMAILED)
    assert emailed.target_id == str(share.pk) and emailed.detail["study"] == str(study.pk)


def test_first_open_notifies_the_sharer_when_asked(
    client, study, radiologist, django_capture_on_commit_callbacks
):
    _, token = make_share(study, radiologist, notify_on_first_open=True)

    with django_capture_on_commit_callbacks(execute=True):
        open_link(client, token)
        open_link(Client(), token)

    assert [m.to for m in mail.outbox] == [[radiologist.email]]


# --- The sharer's pages -----------------------------------------------------------------------


def test_creating_a_link_needs_step_up_and_shows_it_once(client_for, radiologist, study):
    client = client_for(radiologist)
    from tenants.mfa import MFA_AT

    session = client.session
    session[MFA_AT] = int(time.time()) - 3600
    session.save()
    stale = client.get(f"/t/{study.tenant.slug}/studies/{study.pk}/share/")
    session = client.session
    session[MFA_AT] = int(time.time())
    session.save()

    created = client.post(
        f"/t/{study.tenant.slug}/studies/{study.pk}/share/",
        {"expires_days": 7, "challenge": "pin", "pin": "123456", "max_uses": 3},
    )

    assert stale.status_code == 302 and stale["Location"].startswith("/accounts/step-up/")
    token = re.search(r'value="[^"]*/s/([A-Za-z0-9_\-]+)"', created.content.decode())[1]
    assert ShareLink.objects.for_tenant(study.tenant).get().max_uses == 3
    assert open_link(Client(), token, pin="123456").status_code == 303


def test_policy_limits_are_enforced(client_for, radiologist, study):
    response = client_for(radiologist).post(
        f"/t/{study.tenant.slug}/studies/{study.pk}/share/",
        {"expires_days": 400, "challenge": "pin", "pin": "123456"},
    )

    assert response.status_code == 400
    assert "at most 30 days" in response.content.decode()
    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_sharer_lists_reads_the_log_and_revokes_in_one_click(client_for, radiologist, study):
    share, token = make_share(study, radiologist)
    recipient = Client()
    open_link(recipient, token)
    client = client_for(radiologist)
    slug = study.tenant.slug

    listing = client.get(f"/t/{slug}/shares/").content.decode()
    detail = client.get(f"/t/{slug}/shares/{share.pk}/").content.decode()
    client.post(f"/t/{slug}/shares/{share.pk}/revoke/")

    assert "Doe, Jane" in listing and "1" in listing
    assert "Share link opened" in detail
    assert recipient.get("/s/").status_code == 404


def test_share_pages_are_audited_with_their_links_and_studies(
    client_for, radiologist, study, other_study
):
    share, _ = make_share(study, radiologist)
    other, _ = make_share(other_study, radiologist)
    again, _ = make_share(study, radiologist)
    client = client_for(radiologist)
    slug = study.tenant.slug

    client.get(f"/t/{slug}/shares/")
    client.get(f"/t/{slug}/shares/{share.pk}/")

    events = AuditEvent.objects.for_tenant(study.tenant)
    listed = events.get(action=Action.SHARES_LISTED)
    assert listed.actor_id == str(radiologist.pk)
    assert listed.detail == {
        "shares": [str(again.pk), str(other.pk), str(share.pk)],
        "studies": [str(study.pk), str(other_study.pk)],
    }
    viewed = events.get(action=Action.SHARE_VIEWED)
    assert (viewed.target_id, viewed.detail) == (str(study.pk), {"share": str(share.pk)})


def test_a_study_made_confidential_since_is_masked_on_the_sharers_pages(
    client_for, radiologist, clinic, study
):
    from tests.helpers import make_member

    share, _ = make_share(study, radiologist, recipient_email="jane.doe@example.org")
    marker = make_member(clinic, "radiologist", email="marker@north.example")
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    slug = clinic.slug

    listing = client_for(radiologist).get(f"/t/{slug}/shares/").content.decode()
    detail = client_for(radiologist).get(f"/t/{slug}/shares/{share.pk}/").content.decode()
    marker_listing = client_for(marker).get(f"/t/{slug}/shares/").content.decode()

    for page in (listing, detail):
        assert "Confidential study" in page
        assert "Doe, Jane" not in page and "jane.doe@example.org" not in page
    assert "You have not shared any study yet." in marker_listing


def test_another_members_link_is_a_404(client_for, radiologist, technologist, clinic, study):
    from tests.helpers import make_member

    colleague = make_member(clinic, "radiologist", email="colleague@north.example")
    share, _ = make_share(study, radiologist)

    response = client_for(colleague).get(f"/t/{clinic.slug}/shares/{share.pk}/")
    revoke = client_for(colleague).post(f"/t/{clinic.slug}/shares/{share.pk}/revoke/")

    assert response.status_code == revoke.status_code == 404


def test_outsider_gets_404_for_share_pages(client_for, other_tenant_all_roles, study, radiologist):
    share, _ = make_share(study, radiologist)
    client = client_for(other_tenant_all_roles)

    assert client.get(f"/t/north/shares/{share.pk}/").status_code == 404
    assert client.get(f"/t/north/studies/{study.pk}/share/").status_code == 404
    assert client.get(f"/t/south/shares/{share.pk}/").status_code == 404
    assert client.get(f"/t/south/studies/{study.pk}/share/").status_code == 404


def test_front_desk_cannot_share(client_for, front_desk, study):
    response = client_for(front_desk).get(f"/t/{study.tenant.slug}/studies/{study.pk}/share/")

    assert response.status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("pin", ["2468\n", "12", "\uff11\uff12\uff13\uff14"])  # fullwidth 1234
def test_a_pin_must_be_4_to_12_plain_digits(study, radiologist, pin):
    with pytest.raises(ShareInvalid, match="PIN of 4 to 12 digits"):
        make_share(study, radiologist, pin=pin)

    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_a_recipient_taking_originals_from_the_viewer_is_audited_each_time(
    client, study, radiologist
):
    share, token = make_share(study, radiologist, allow_download=True)
    open_link(client, token)
    session_id = re.search(
        r'data-viewer-session="([0-9a-f-]+)"', client.get("/s/viewer/").content.decode()
    )[1]
    instance = first_instance(study)
    client.get(frame_url(instance), HTTP_ACCEPT=FRAMES, HTTP_X_VIEWER_SESSION=session_id)
    events = AuditEvent.objects.for_tenant(study.tenant).filter(actor_id=str(share.pk))
    before = events.count()

    for _ in range(2):
        response = client.get(
            f"/s/dicomweb/studies/{study.study_uid}",
            HTTP_ACCEPT='multipart/related; type="application/dicom"',
            HTTP_X_VIEWER_SESSION=session_id,
        )
        assert response.status_code == 200

    taken = list(events.order_by("seq")[before:].values_list("action", "detail"))
    assert [action for action, _ in taken] == [Action.DICOMWEB_RETRIEVE] * 2
    assert all(detail["instances"] == 3 for _, detail in taken)


def test_a_viewer_session_of_another_hold_on_the_link_does_not_silence_the_audit(
    study, radiologist
):
    share, token = make_share(study, radiologist, max_uses=2)
    first, later = Client(), Client()
    open_link(first, token)
    session_id = re.search(
        r'data-viewer-session="([0-9a-f-]+)"', first.get("/s/viewer/").content.decode()
    )[1]
    instance = first_instance(study)
    first.get(frame_url(instance), HTTP_ACCEPT=FRAMES, HTTP_X_VIEWER_SESSION=session_id)
    time.sleep(0.01)  # the second opening is strictly later than the first's viewer
    open_link(later, token)  # another browser, another person perhaps: the second use
    events = AuditEvent.objects.for_tenant(study.tenant).filter(actor_id=str(share.pk))
    before = events.count()

    for _ in range(2):
        later.get(frame_url(instance), HTTP_ACCEPT=FRAMES, HTTP_X_VIEWER_SESSION=session_id)

    read = list(events.order_by("seq")[before:].values_list("action", flat=True))
    assert read == [Action.DICOMWEB_RETRIEVE] * 2  # each read on its own, not folded in


def test_a_view_only_recipient_asking_for_the_download_is_told_why(client, study, radiologist):
    _, token = make_share(study, radiologist)
    open_link(client, token)

    response = client.get("/s/download/")
    viewer = client.get("/s/viewer/").content.decode()

    body = response.content.decode()
    assert response.status_code == 403
    assert "This link does not allow download." in body
    assert "administrator" not in body  # a recipient has no role or administrator here
    assert "<title>Viewer · Shared study" in viewer


def test_the_share_forms_series_are_a_labelled_group_of_plain_choices(
    client_for, radiologist, clinic
):
    study = ingest_study(
        clinic, synthetic_ct(slices=1, size=16, tags={"SeriesDescription": "", "SeriesNumber": 1})
    )

    body = (
        client_for(radiologist).get(f"/t/{clinic.slug}/studies/{study.pk}/share/").content.decode()
    )

    assert "<legend>Series to share</legend>" in body
    group = body[body.index("<legend>Series to share</legend>") : body.index("</fieldset>")]
    assert "Series 1 · CT</label>" in group  # no dangling separator without a description
    assert body.count("<label") == body.count("</label>")
    assert "<label>" not in group  # no label wrapping the group (labels may not nest)


@pytest.mark.parametrize(
    ("change", "state", "status"),
    [
        ({"revoked_at": timezone.now()}, "revoked", 404),
        ({"locked_at": timezone.now()}, "locked", 403),
        ({"use_count": 1}, "used_up", 410),
    ],
)
def test_a_use_refused_names_why_when_the_link_changed_since_it_was_read(
    study, radiologist, change, state, status
):
    share, _ = make_share(study, radiologist, challenge=ShareLink.Challenge.NONE, max_uses=1)
    ShareLink.objects.for_tenant(study.tenant).filter(pk=share.pk).update(**change)

    with pytest.raises(ShareUnavailable) as refused:
        share_use(share=share, now=timezone.now(), ip=None)  # the copy read before

    assert (refused.value.status, refused.value.reason) == (status, state)
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_REFUSED)
    assert event.detail["state"] == state


# --- The recipient's session ---------------------------------------------------------------


def test_a_viewer_of_a_revoked_link_is_refused_once_then_holds_no_link(study, radiologist):
    share, token = make_share(study, radiologist)
    client = Client()
    open_link(client, token)
    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())

    answers = [client.get(frame_url(first_instance(study)), HTTP_ACCEPT=FRAMES) for _ in range(5)]

    assert answers[0].status_code == 404
    assert {a.status_code for a in answers[1:]} == {401}
    refused = AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.SHARE_REFUSED)
    assert refused.count() == 1


def test_a_member_opening_a_link_keeps_their_own_session(study, radiologist, client_for):
    _, token = make_share(study, radiologist)
    client = client_for(radiologist)
    before = client.session.get_expiry_age()

    opened = client.get(f"/s/{token}")

    assert opened.status_code == 303
    assert client.session.get_expire_at_browser_close()
    assert abs(client.session.get_expiry_age() - before) < 60
    assert client.get(f"/t/{study.tenant.slug}/").status_code == 200


def test_a_recipients_session_ends_with_the_browser_and_after_four_hours(
    study, radiologist, monkeypatch, settings
):
    from sharing import recipient

    _, token = make_share(study, radiologist, expires_at=timezone.now() + dt.timedelta(days=2))
    client = Client()
    open_link(client, token)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    assert client.get("/s/").status_code == 200

    later = timezone.now() + dt.timedelta(seconds=recipient.SESSION_MAX_SECONDS + 1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert not cookie["max-age"] and not cookie["expires"]  # ends with the browser
    ended = client.get("/s/")
    assert ended.status_code == 403
    assert "ran out" in ended.content.decode()
    assert client.get("/s/").status_code == 404  # let go of: the link must be opened again


def _at(monkeypatch, moment: dt.datetime) -> None:
    monkeypatch.setattr(timezone, "now", lambda: moment)


@pytest.fixture
def idle_limit(settings):
    settings.SESSION_IDLE_SECONDS = 15 * 60


def _recipient(study, radiologist, **options) -> tuple[ShareLink, Client, dt.datetime]:
    """A link opened in a browser: the link, the browser, and when it was opened."""
    share, token = make_share(study, radiologist, **options)
    client = Client()
    open_link(client, token)
    return share, client, timezone.now()


def test_a_recipient_idle_past_the_limit_must_open_the_link_again(
    study, radiologist, monkeypatch, idle_limit
):
    share, client, start = _recipient(study, radiologist)

    _at(monkeypatch, start + dt.timedelta(minutes=16))
    ended = client.get("/s/")
    again = client.get("/s/")

    assert ended.status_code == 403
    assert "Nothing was done here for a while" in ended.content.decode()
    assert again.status_code == 404
    events = AuditEvent.objects.filter(action=Action.SESSION_EXPIRED, tenant=study.tenant)
    assert [(e.actor_id, e.detail) for e in events] == [
        (str(share.pk), {"share": str(share.pk), "reason": "idle"})
    ]


def test_a_recipient_who_keeps_looking_stays_until_the_absolute_limit(
    study, radiologist, monkeypatch, idle_limit
):
    later = timezone.now() + dt.timedelta(days=2)
    _, client, start = _recipient(study, radiologist, expires_at=later)

    statuses = []
    for minutes in range(10, 4 * 60, 10):
        _at(monkeypatch, start + dt.timedelta(minutes=minutes))
        statuses.append(client.get("/s/").status_code)

    assert set(statuses) == {200}


def test_the_clinics_shorter_idle_limit_binds_its_recipients(
    study, radiologist, monkeypatch, idle_limit
):
    study.tenant.session_idle_minutes = 5
    study.tenant.save(update_fields=["session_idle_minutes"])
    _, client, start = _recipient(study, radiologist)

    _at(monkeypatch, start + dt.timedelta(minutes=6))

    assert client.get("/s/").status_code == 403


def test_a_link_opened_over_one_idle_past_the_limit_takes_its_place_at_once(
    study, other_study, radiologist, monkeypatch, idle_limit
):
    _, client, start = _recipient(study, radiologist)
    _, other = make_share(other_study, radiologist)

    _at(monkeypatch, start + dt.timedelta(minutes=16))
    response = client.get(f"/s/{other}")

    assert response.status_code == 303  # nothing left open to ask about


def test_the_viewers_timed_access_check_does_not_keep_a_recipient_in(
    study, radiologist, monkeypatch, idle_limit
):
    _, client, start = _recipient(study, radiologist)
    poll = f"/s/dicomweb/studies/{study.study_uid}/access"
    instance = first_instance(study)

    polled = []
    for minutes in (5, 10, 14):
        _at(monkeypatch, start + dt.timedelta(minutes=minutes))
        polled.append(client.get(poll).status_code)
    _at(monkeypatch, start + dt.timedelta(minutes=16))
    frame = client.get(frame_url(instance), HTTP_ACCEPT="application/octet-stream")

    assert polled == [204, 204, 204]
    assert frame.status_code == 401
    assert "open the link again" in frame.json()["error"]


def test_another_page_linking_to_an_unknown_token_does_not_end_a_recipients_session(
    study, radiologist
):
    _, token = make_share(study, radiologist)
    client = Client()
    open_link(client, token)

    junk = client.get("/s/download")  # no trailing slash: taken for a token

    assert junk.status_code == 404
    assert client.get("/s/").status_code == 200


def test_another_valid_link_asks_before_it_takes_the_place_of_an_opened_one(
    study, other_study, radiologist
):
    held, token = make_share(study, radiologist, max_uses=1)
    _, other = make_share(other_study, radiologist, challenge=ShareLink.Challenge.NONE)
    opener = Client()
    open_link(opener, token)
    client = Client(enforce_csrf_checks=True)  # the same browser, checked as in production
    client.cookies = opener.cookies

    asked = client.get(f"/s/{other}")  # any page can send the browser there
    still = client.get("/s/")
    forged = client.post(f"/s/{other}")  # without the page's CSRF token
    switched = client.post(f"/s/{other}", {"csrfmiddlewaretoken": asked.context["csrf_token"]})

    assert asked.status_code == 200 and b"Another shared study is open" in asked.content
    # Not no-referrer: its form's POST would carry `Origin: null`, which CSRF refuses.
    assert asked["Referrer-Policy"] == "origin"
    assert still.status_code == 200 and "Doe, Jane" in still.content.decode()
    assert forged.status_code == 403
    assert switched.status_code == 303 and switched["Location"] == "/s/"
    assert client.session["share_access"]["id"] != str(held.pk)
    assert ShareLink.objects.for_tenant(study.tenant).get(pk=held.pk).use_count == 1


def test_a_link_opened_over_one_not_yet_verified_takes_its_place_at_once(
    study, other_study, radiologist
):
    _, token = make_share(study, radiologist)
    _, other = make_share(other_study, radiologist)
    client = Client()
    client.get(f"/s/{token}")  # its PIN never given

    response = client.get(f"/s/{other}")

    assert response.status_code == 303


# --- Close and forget ------------------------------------------------------------------


def test_closing_a_link_forgets_it_on_this_device(client, study, radiologist):
    _, token = make_share(study, radiologist)
    open_link(client, token)

    left = client.post("/s/leave/")

    assert left.status_code == 200
    assert client.get(frame_url(first_instance(study))).status_code == 401
    assert "Doe, Jane" not in client.get("/s/").content.decode()


def test_a_request_under_way_when_the_link_is_closed_cannot_give_it_back(
    client, study, radiologist
):
    from django.contrib.sessions.backends.base import UpdateError

    from tenants.session_store import SessionStore

    _, token = make_share(study, radiologist)
    open_link(client, token)
    # A slow viewer request loaded the session before the button was pressed.
    under_way = SessionStore(session_key=client.session.session_key)
    held = under_way["share_access"]

    client.post("/s/leave/")
    under_way["share_access"] = {**held, "seen": held["seen"] + 20}  # its activity stamp
    with pytest.raises(UpdateError):
        under_way.save()

    assert client.get(frame_url(first_instance(study))).status_code == 401


def test_the_links_history_shows_no_event_written_past_the_chains_head(
    client_for, radiologist, clinic, study
):
    from audit.models import AuditEvent
    from tests.audit_tests.helpers import forged_beyond_head

    share, _ = make_share(study, radiologist)
    created = AuditEvent.objects.for_tenant(clinic).get(action=Action.SHARE_CREATED)
    forged_beyond_head(created, ahead=1000)

    page = client_for(radiologist).get(f"/t/{clinic.slug}/shares/{share.pk}/")

    rows = page.context["rows"]
    assert [row["event"].pk for row in rows] == [created.pk]
