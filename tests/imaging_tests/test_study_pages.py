"""The study page and its actions: who sees what, download with step-up, break-glass, grants."""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
import zipfile

import pytest
from django.core import mail

from audit.models import Action, AuditEvent
from imaging.models import Instance
from imaging.services import study_grant, study_set_confidential
from tenants.models import BreakGlassGrant, User
from tests.helpers import TEST_ACTOR, make_member, page_body
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

URL = "/t/{slug}/studies/{id}/{rest}"


def url(study, rest: str = "", slug: str | None = None) -> str:
    return URL.format(slug=slug or study.tenant.slug, id=study.pk, rest=rest)


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=3, size=32, patient_name="Doe^Jane"))


@pytest.fixture
def other_study(other_clinic):
    return ingest_study(other_clinic, synthetic_ct(slices=1, size=16, patient_name="South^Sam"))


def stale_step_up(client) -> None:
    from tenants.mfa import MFA_AT

    session = client.session
    session[MFA_AT] = int(time.time()) - 3600
    session.save()


def events(clinic, action) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_tenant(clinic).filter(action=action).order_by("seq"))


# --- Who sees the study page ------------------------------------------------------------


def test_radiologist_sees_details_viewer_and_download(client_for, radiologist, study):
    response = client_for(radiologist).get(url(study))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Doe, Jane" in html and "SYN-0001" in html
    assert url(study, "viewer/") in html and url(study, "download/") in html
    assert events(study.tenant, Action.STUDY_VIEWED)[-1].target_id == str(study.pk)


def test_front_desk_sees_demographics_but_no_viewer(client_for, front_desk, study):
    client = client_for(front_desk)

    page = client.get(url(study)).content.decode()
    viewer = client.get(url(study, "viewer/"))

    assert "Doe, Jane" in page
    assert url(study, "viewer/") not in page and "/thumbnail" not in page
    assert viewer.status_code == 403


def test_another_clinics_study_is_a_404_like_a_missing_one(client_for, radiologist, other_study):
    client = client_for(radiologist)
    missing = client.get(f"/t/north/studies/{uuid.uuid4()}/")

    for rest in ("", "viewer/", "download/", "break-glass/"):
        foreign = client.get(url(other_study, rest, slug="north"))
        assert foreign.status_code == missing.status_code == 404
        assert page_body(foreign) == page_body(missing)
    for rest in ("grants/", "confidential/", f"grants/{radiologist.pk}/revoke/"):
        assert client.post(url(other_study, rest, slug="north")).status_code == 404


def test_outsider_gets_404_on_the_study_page(client_for, other_tenant_all_roles, study):
    assert client_for(other_tenant_all_roles).get(url(study)).status_code == 404


def test_referring_physician_needs_a_grant(client_for, referring_physician, study):
    client = client_for(referring_physician)
    before = client.get(url(study)).status_code

    study_grant(study=study, grantee=referring_physician, download=False, actor=TEST_ACTOR)

    assert before == 404
    assert client.get(url(study)).status_code == 200
    assert client.get(url(study, "viewer/")).status_code == 200
    assert client.get(url(study, "download/")).status_code == 403


def test_history_is_shown_only_to_roles_that_read_the_audit(client_for, clinic, study):
    auditor = make_member(clinic, "radiologist", "privacy_officer", email="both@north.example")
    plain = make_member(clinic, "radiologist", email="plain@north.example")
    client_for(plain).get(url(study, "viewer/"))
    client_for(plain).get(f"/t/{clinic.slug}/")  # the worklist showed its demographics

    with_history = client_for(auditor).get(url(study)).content.decode()
    without = client_for(plain).get(url(study)).content.decode()

    assert "Access history" in with_history
    assert "plain@north.example (Radiologist)" in with_history
    assert "Study opened in the viewer" in with_history
    assert "Worklist viewed" in with_history  # events naming the study in their detail too
    assert "Access history" not in without


def test_the_history_of_a_masked_study_names_its_series_reads_and_is_itself_audited(
    client_for, clinic, study, tenant_admin
):
    from imaging.models import Series
    from tests.imaging_tests.dicomweb_support import BASE, http, token_for

    series = Series.objects.for_tenant(clinic).get(study=study)
    partner = http(token_for(clinic, "dicomweb:read"))
    answer = partner.get(f"{BASE}/studies/{study.study_uid}/series/{series.series_uid}")
    assert answer.status_code == 200
    marker = make_member(clinic, "radiologist", email="marker@north.example")
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    auditor = make_member(clinic, "radiologist", "privacy_officer", email="both@north.example")

    page = client_for(auditor).get(url(study)).content.decode()

    assert "Confidential study" in page and "Access history" in page
    assert "DICOMweb retrieve" in page  # the partner's read of the one series
    (viewed,) = events(clinic, Action.AUDIT_VIEWED)
    assert viewed.detail == {"page": "study_history", "filters": {"study": str(study.pk)}}
    assert viewed.actor_id == str(auditor.pk)


# --- Download -----------------------------------------------------------------------------


def test_download_demands_a_fresh_second_factor(client_for, radiologist, study):
    client = client_for(radiologist)
    stale_step_up(client)

    response = client.get(url(study, "download/"))

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/step-up/?next=")
    assert not events(study.tenant, Action.STUDY_DOWNLOADED)


def test_download_streams_every_instance_with_an_exact_length(client_for, radiologist, study):
    response = client_for(radiologist).get(url(study, "download/"))

    body = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = [n for n in archive.namelist() if n.endswith(".dcm")]
    stored = {i.sha256 for i in Instance.objects.for_tenant(study.tenant).filter(study=study)}
    assert response["Content-Type"] == "application/zip"
    assert int(response["Content-Length"]) == len(body)
    assert "Doe" not in response["Content-Disposition"]
    assert len(names) == 3 and all("Doe" not in n and "SYN" not in n for n in names)
    assert {hashlib.sha256(archive.read(n)).hexdigest() for n in names} == stored
    (event,) = events(study.tenant, Action.STUDY_DOWNLOADED)
    assert event.detail["instances"] == 3 and event.target_id == str(study.pk)


def test_front_desk_and_technologist_cannot_download(client_for, front_desk, technologist, study):
    assert client_for(front_desk).get(url(study, "download/")).status_code == 403
    assert client_for(technologist).get(url(study, "download/")).status_code == 403


def test_a_download_grant_lets_a_referring_physician_download(
    client_for, referring_physician, study
):
    study_grant(study=study, grantee=referring_physician, download=True, actor=TEST_ACTOR)

    response = client_for(referring_physician).get(url(study, "download/"))

    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).testzip() is None


# --- Confidential studies and break-glass ----------------------------------------------------


@pytest.fixture
def confidential(study, tenant_admin):
    marker = make_member(study.tenant, "radiologist", email="marker@north.example")
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    return study


def test_confidential_study_page_offers_break_glass_and_hides_details(
    client_for, radiologist, confidential
):
    client = client_for(radiologist)

    page = client.get(url(confidential)).content.decode()
    viewer = client.get(url(confidential, "viewer/"))

    # As a word: random tokens in the page (CSRF) may hold the letters "Doe".
    assert not re.search(r"\bDoe\b", page) and "SYN-0001" not in page
    assert url(confidential, "break-glass/") in page
    assert viewer.status_code == 403


def test_break_glass_refuses_an_empty_reason_and_opens_nothing(
    client_for, radiologist, confidential
):
    response = client_for(radiologist).post(url(confidential, "break-glass/"), {"reason": "  "})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not BreakGlassGrant.objects.for_tenant(confidential.tenant).exists()


def test_break_glass_with_a_reason_opens_the_study_audits_and_notifies(
    client_for, radiologist, privacy_officer, confidential, django_capture_on_commit_callbacks
):
    client = client_for(radiologist)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url(confidential, "break-glass/"), {"reason": "Unconscious patient in the ED, trauma"}
        )

    assert response.status_code == 302 and response["Location"] == url(confidential)
    assert "Doe, Jane" in client.get(url(confidential)).content.decode()
    assert client.get(url(confidential, "viewer/")).status_code == 200
    (event,) = events(confidential.tenant, Action.BREAK_GLASS_OPENED)
    assert event.target_id == str(confidential.pk)
    assert [m.to for m in mail.outbox] == [[privacy_officer.email]]


def test_technologist_cannot_break_the_glass(client_for, technologist, confidential):
    response = client_for(technologist).post(
        url(confidential, "break-glass/"), {"reason": "I would like to look at it please"}
    )

    assert response.status_code == 403
    assert not BreakGlassGrant.objects.for_tenant(confidential.tenant).exists()


def test_marking_confidential_is_audited(client_for, radiologist, study):
    client_for(radiologist).post(url(study, "confidential/"), {"confidential": "1"})

    study.refresh_from_db()
    assert study.confidential
    assert events(study.tenant, Action.STUDY_CONFIDENTIALITY_CHANGED)[-1].detail == {
        "confidential": True
    }


@pytest.mark.parametrize("value", ["true", "yes", "", "\x00", None])
def test_a_confidentiality_choice_that_is_not_1_or_0_is_a_400_and_keeps_the_mark(
    client_for, radiologist, study, value
):
    client = client_for(radiologist)
    client.post(url(study, "confidential/"), {"confidential": "1"})
    before = len(events(study.tenant, Action.STUDY_CONFIDENTIALITY_CHANGED))

    response = client.post(
        url(study, "confidential/"), {} if value is None else {"confidential": value}
    )

    study.refresh_from_db()
    assert response.status_code == 400 and b"nothing was changed" in response.content
    assert study.confidential
    assert len(events(study.tenant, Action.STUDY_CONFIDENTIALITY_CHANGED)) == before


def test_technologist_cannot_mark_confidential(client_for, technologist, study):
    response = client_for(technologist).post(url(study, "confidential/"), {"confidential": "1"})

    study.refresh_from_db()
    assert response.status_code == 403 and not study.confidential


# --- Grants to referring physicians -----------------------------------------------------------


def test_granting_needs_a_fresh_second_factor(client_for, radiologist, referring_physician, study):
    client = client_for(radiologist)
    stale_step_up(client)

    response = client.post(
        url(study, "grants/"), {"grantee": str(referring_physician.pk), "level": "view"}
    )

    assert response["Location"].startswith("/accounts/step-up/")
    assert client_for(referring_physician).get(url(study)).status_code == 404


def test_grant_then_revoke(client_for, radiologist, referring_physician, study):
    client = client_for(radiologist)
    physician = client_for(referring_physician)

    client.post(url(study, "grants/"), {"grantee": str(referring_physician.pk), "level": "view"})
    granted = physician.get(url(study)).status_code
    client.post(url(study, f"grants/{referring_physician.pk}/revoke/"))

    assert granted == 200
    assert physician.get(url(study)).status_code == 404
    actions = [e.action for e in events(study.tenant, Action.GRANT_ADDED)] + [
        e.action for e in events(study.tenant, Action.GRANT_REVOKED)
    ]
    assert actions == [Action.GRANT_ADDED, Action.GRANT_REVOKED]


def test_a_message_naming_the_grantee_is_kept_on_the_server_not_in_a_cookie(
    client_for, radiologist, referring_physician, study
):
    client = client_for(radiologist)

    response = client.post(
        url(study, "grants/"), {"grantee": str(referring_physician.pk), "level": "view"}
    )
    page = client.get(response["Location"])

    assert referring_physician.email.encode() in page.content  # the message is shown
    assert all(
        referring_physician.email.split("@")[0] not in c.value for c in client.cookies.values()
    )
    assert "messages" not in response.cookies


def test_only_referring_physicians_of_the_clinic_can_be_granted(
    client_for, radiologist, technologist, other_tenant_all_roles, study
):
    client = client_for(radiologist)

    for grantee in (technologist, other_tenant_all_roles):
        client.post(url(study, "grants/"), {"grantee": str(grantee.pk), "level": "view"})

    assert not events(study.tenant, Action.GRANT_ADDED)


def test_technologist_cannot_grant(client_for, technologist, referring_physician, study):
    response = client_for(technologist).post(
        url(study, "grants/"), {"grantee": str(referring_physician.pk), "level": "view"}
    )

    assert response.status_code == 403


@pytest.mark.parametrize(
    ("stored", "shown"), [("235959.123", "23:59"), ("0730", "07:30"), ("10", "10:00")]
)
def test_the_study_time_is_shown_as_a_time(client_for, radiologist, clinic, stored, shown):
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16, tags={"StudyTime": stored}))

    body = client_for(radiologist).get(url(study)).content.decode()

    assert f"{shown}</dd>" in body


def test_a_series_without_a_modality_is_labelled_without_a_gap(client_for, radiologist, clinic):
    study = ingest_study(
        clinic, synthetic_ct(slices=1, size=16, tags={"Modality": "", "SeriesNumber": 4})
    )

    page = client_for(radiologist).get(url(study)).content.decode()
    viewer = client_for(radiologist).get(url(study, "viewer/")).content.decode()

    assert "Series 4 · 1 image" in page and "Series 4 · 1 image" in viewer
    assert "· ·" not in page and "· ·" not in viewer


# --- Break-glass reads; it does not change who may read -----------------------------------


def _broken_open(client, study) -> None:
    response = client.post(url(study, "break-glass/"), {"reason": "Unconscious patient in the ED"})
    assert response.status_code == 302


def test_break_glass_needs_a_fresh_second_factor(client_for, radiologist, confidential):
    client = client_for(radiologist)
    stale_step_up(client)

    asked = client.post(url(confidential, "break-glass/"), {"reason": "Unconscious patient, ED"})
    page = client.get(url(confidential, "break-glass/"))

    assert asked.status_code == 302 and asked["Location"].startswith("/accounts/step-up/")
    assert page["Location"] == asked["Location"]
    assert url(confidential, "break-glass/") in asked["Location"].replace("%2F", "/")
    assert not BreakGlassGrant.objects.for_tenant(confidential.tenant).exists()


def test_break_glass_does_not_let_a_member_grant_the_study(
    client_for, radiologist, referring_physician, confidential
):
    client = client_for(radiologist)
    _broken_open(client, confidential)
    before = len(events(confidential.tenant, Action.GRANT_ADDED))  # the marker's own

    page = client.get(url(confidential)).content.decode()
    response = client.post(
        url(confidential, "grants/"), {"grantee": str(referring_physician.pk), "level": "download"}
    )

    assert url(confidential, "grants/") not in page
    assert response.status_code == 403
    assert len(events(confidential.tenant, Action.GRANT_ADDED)) == before
    assert client_for(referring_physician).get(url(confidential)).status_code == 404


def test_break_glass_does_not_let_a_member_revoke_the_markers_grant(
    client_for, radiologist, confidential
):
    marker = User.objects.get(email="marker@north.example")
    client = client_for(radiologist)
    _broken_open(client, confidential)

    response = client.post(url(confidential, f"grants/{marker.pk}/revoke/"))

    assert response.status_code == 403
    assert not events(confidential.tenant, Action.GRANT_REVOKED)


@pytest.mark.parametrize("choice", ["0", "1"])
def test_break_glass_does_not_let_a_member_change_the_confidential_mark(
    client_for, radiologist, front_desk, confidential, choice
):
    client = client_for(radiologist)
    _broken_open(client, confidential)
    before = len(events(confidential.tenant, Action.STUDY_CONFIDENTIALITY_CHANGED))

    page = client.get(url(confidential)).content.decode()
    response = client.post(url(confidential, "confidential/"), {"confidential": choice})

    confidential.refresh_from_db()
    assert url(confidential, "confidential/") not in page
    assert response.status_code == 403 and confidential.confidential
    assert len(events(confidential.tenant, Action.STUDY_CONFIDENTIALITY_CHANGED)) == before
    assert "Doe" not in client_for(front_desk).get("/t/north/").content.decode()


def test_changing_the_confidential_mark_needs_a_fresh_second_factor(client_for, radiologist, study):
    client = client_for(radiologist)
    stale_step_up(client)

    response = client.post(url(study, "confidential/"), {"confidential": "1"})

    study.refresh_from_db()
    assert response["Location"].startswith("/accounts/step-up/")
    assert not study.confidential


def test_a_member_cannot_grant_a_study_to_themselves(client_for, clinic, study):
    both = make_member(clinic, "radiologist", "referring_physician", email="both@north.example")
    client = client_for(both)

    page = client.get(url(study)).content.decode()
    response = client.post(url(study, "grants/"), {"grantee": str(both.pk), "level": "download"})

    assert "both@north.example</option>" not in page
    assert response.status_code == 302
    assert not events(study.tenant, Action.GRANT_ADDED)


def test_a_download_under_break_glass_names_the_grant(client_for, radiologist, confidential):
    client = client_for(radiologist)
    _broken_open(client, confidential)
    grant = BreakGlassGrant.objects.for_tenant(confidential.tenant).get()

    response = client.get(url(confidential, "download/"))
    b"".join(response.streaming_content)

    (event,) = events(confidential.tenant, Action.STUDY_DOWNLOADED)
    assert event.detail["break_glass"] == str(grant.pk)
