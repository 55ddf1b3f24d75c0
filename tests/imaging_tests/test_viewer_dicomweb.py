"""The viewer's own DICOMweb root, /t/<slug>/dicomweb/: scope, channel rules and audit.

Pixel reads under a viewer session are audited once per series, not once per frame;
reads without one are audited one by one.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pydicom
import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import Action, AuditEvent
from imaging.models import Instance, ViewerSession
from imaging.selectors import study_target
from imaging.services import study_grant, study_grant_revoke, study_set_confidential
from tenants.breakglass import break_glass_open
from tests.helpers import TEST_ACTOR, make_member, membership_of, response_bytes
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import (
    ingest,
    ingest_study,
    sample_bytes,
    sample_path,
    synthetic_ct,
)

FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"'


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=4, size=32, patient_name="Doe^Jane"))


def instances(study) -> list[Instance]:
    return list(
        Instance.objects.for_tenant(study.tenant)
        .filter(study=study)
        .select_related("series")
        .order_by("instance_number")
    )


def frame_url(instance: Instance, number: int = 1, slug: str | None = None) -> str:
    return (
        f"/t/{slug or instance.tenant.slug}/dicomweb/studies/{instance.study.study_uid}"
        f"/series/{instance.series.series_uid}/instances/{instance.sop_instance_uid}"
        f"/frames/{number}"
    )


def metadata_url(study, series_uid: str) -> str:
    return f"/t/{study.tenant.slug}/dicomweb/studies/{study.study_uid}/series/{series_uid}/metadata"


def open_viewer(client, study) -> str:
    html = client.get(f"/t/{study.tenant.slug}/studies/{study.pk}/viewer/").content.decode()
    return re.search(r'data-viewer-session="([0-9a-f-]+)"', html)[1]


def first_part(response) -> bytes:
    boundary = re.search(r"boundary=([^;\s]+)", response["Content-Type"])[1].encode()
    part = response_bytes(response).split(b"--" + boundary)[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def audit_actions(clinic) -> list[str]:
    return list(
        AuditEvent.objects.for_tenant(clinic).order_by("seq").values_list("action", flat=True)
    )


def test_viewer_page_opens_a_viewer_session_and_audits_it(client_for, radiologist, study):
    client = client_for(radiologist)

    session_id = open_viewer(client, study)

    session = ViewerSession.objects.for_tenant(study.tenant).get(pk=session_id)
    assert session.user == radiologist and session.study == study
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.VIEWER_OPENED)
    assert event.target_id == str(study.pk) and event.detail["viewer_session"] == session_id


def test_frames_under_a_viewer_session_are_audited_once_per_series(client_for, radiologist, study):
    client = client_for(radiologist)
    session_id = open_viewer(client, study)
    rows = instances(study)

    metadata = client.get(
        metadata_url(study, rows[0].series.series_uid), HTTP_X_VIEWER_SESSION=session_id
    )
    frames = [
        client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)
        for row in rows * 2
    ]

    assert metadata.status_code == 200 and len(metadata.json()) == 4
    assert {f.status_code for f in frames} == {200}
    viewed = AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.SERIES_VIEWED)
    assert [(e.target_id, e.detail["viewer_session"]) for e in viewed] == [
        (str(rows[0].series_id), session_id)
    ]
    assert Action.DICOMWEB_RETRIEVE not in audit_actions(study.tenant)


def test_reads_without_a_viewer_session_are_audited_one_by_one(client_for, radiologist, study):
    client = client_for(radiologist)

    for row in instances(study):
        client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert audit_actions(study.tenant).count(Action.DICOMWEB_RETRIEVE) == 4


def test_someone_elses_viewer_session_does_not_silence_the_audit(
    client_for, radiologist, technologist, study
):
    session_id = open_viewer(client_for(radiologist), study)
    client = client_for(technologist)

    for row in instances(study):
        client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)

    assert audit_actions(study.tenant).count(Action.DICOMWEB_RETRIEVE) == 4


def test_a_viewer_session_of_an_earlier_sign_in_does_not_silence_the_audit(
    client_for, radiologist, study
):
    session_id = open_viewer(client_for(radiologist), study)
    ViewerSession.objects.for_tenant(study.tenant).filter(pk=session_id).update(
        created_at=timezone.now() - dt.timedelta(minutes=5)
    )
    later = client_for(radiologist)  # signed in again since (another day, a history URL)

    for row in instances(study):
        later.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)

    assert audit_actions(study.tenant).count(Action.DICOMWEB_RETRIEVE) == 4


def test_a_viewer_session_past_its_sitting_does_not_silence_the_audit(
    client_for, radiologist, study
):
    client = client_for(radiologist)
    session_id = open_viewer(client, study)
    ViewerSession.objects.for_tenant(study.tenant).filter(pk=session_id).update(
        created_at=timezone.now() - dt.timedelta(hours=13)
    )

    for row in instances(study):
        client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT, HTTP_X_VIEWER_SESSION=session_id)

    assert audit_actions(study.tenant).count(Action.DICOMWEB_RETRIEVE) == 4


def test_frame_pixels_are_the_stored_values(client_for, radiologist, study):
    row = instances(study)[0]

    response = client_for(radiologist).get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT)

    pixels = np.frombuffer(first_part(response), dtype="<u2").reshape(32, 32)
    assert pixels[0, 5] == 5 and pixels[1, 0] == 32


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_rle_2frame.dcm",
    ],
)
def test_compressed_images_are_served_decoded_to_the_viewer(client_for, radiologist, clinic, name):
    result = ingest(clinic, sample_bytes(name), name=name)
    row = (
        Instance.objects.for_tenant(clinic)
        .select_related("study", "series")
        .get(pk=result.instance_id)
    )
    ds = pydicom.dcmread(sample_path(name))
    client = client_for(radiologist)

    raw = client.get(frame_url(row, row.number_of_frames), HTTP_ACCEPT=FRAMES_ACCEPT)
    png = client.get(frame_url(row, 1) + "/rendered", HTTP_ACCEPT="image/png")

    frame = ds.pixel_array[-1] if row.number_of_frames > 1 else ds.pixel_array
    assert raw.status_code == 200
    assert len(first_part(raw)) == frame.nbytes
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_referring_physician_reads_only_granted_studies(client_for, referring_physician, study):
    client = client_for(referring_physician)
    row = instances(study)[0]
    before = client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT).status_code

    study_grant(study=study, grantee=referring_physician, download=False, actor=TEST_ACTOR)
    during = client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT).status_code
    study_grant_revoke(study=study, grantee=referring_physician, actor=TEST_ACTOR)
    after = client.get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT).status_code

    assert (before, during, after) == (404, 200, 404)


def test_the_viewers_access_check_follows_the_grant_and_writes_no_audit_event(
    client_for, referring_physician, other_tenant_all_roles, study
):
    client = client_for(referring_physician)
    url = f"/t/{study.tenant.slug}/dicomweb/studies/{study.study_uid}/access"
    study_grant(study=study, grantee=referring_physician, download=False, actor=TEST_ACTOR)
    events = AuditEvent.objects.for_tenant(study.tenant).count()

    during = client.get(url).status_code
    study_grant_revoke(study=study, grantee=referring_physician, actor=TEST_ACTOR)
    after = client.get(url)
    missing = client.get(url.replace(study.study_uid, "1.2.3.4"))

    assert (during, after.status_code) == (204, 404)
    assert after.content == missing.content
    assert AuditEvent.objects.for_tenant(study.tenant).count() == events + 1  # the revocation
    outsider = client_for(other_tenant_all_roles)
    assert outsider.get(url).status_code == 404
    assert outsider.get(url.replace("/t/north/", "/t/south/")).status_code == 404


def test_partners_have_no_access_check_route(clinic, study):
    session = http(token_for(clinic, "dicomweb:read"))

    assert session.get(f"{BASE}/studies/{study.study_uid}/access").status_code == 404


def test_confidential_study_pixels_need_a_grant_or_break_glass(client_for, radiologist, study):
    marker = make_member(study.tenant, "radiologist", email="marker@north.example")
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    row = instances(study)[0]

    assert client_for(radiologist).get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT).status_code == 404
    assert client_for(marker).get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT).status_code == 200


def test_searches_see_only_the_members_studies(client_for, referring_physician, clinic, study):
    granted = ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Granted^One"))
    study_grant(study=granted, grantee=referring_physician, download=False, actor=TEST_ACTOR)

    response = client_for(referring_physician).get(f"/t/{clinic.slug}/dicomweb/studies")

    assert [item["0020000D"]["Value"][0] for item in response.json()] == [granted.study_uid]


def test_front_desk_gets_403(client_for, front_desk, study):
    response = client_for(front_desk).get(frame_url(instances(study)[0]), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert response.status_code == 403


def test_the_viewer_root_is_read_only(client_for, radiologist, study):
    response = client_for(radiologist).post(
        f"/t/{study.tenant.slug}/dicomweb/studies",
        data=b"",
        content_type='multipart/related; type="application/dicom"; boundary=x',
    )

    assert response.status_code == 405
    assert Instance.objects.for_tenant(study.tenant).count() == 4


def test_the_viewer_root_ignores_bearer_tokens(client, study):
    from tenants.tokens import api_token_create

    _, raw = api_token_create(
        tenant=study.tenant,
        name="t",
        scopes=["dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )

    response = client.get(
        frame_url(instances(study)[0]),
        HTTP_ACCEPT=FRAMES_ACCEPT,
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )

    assert response.status_code == 401


def test_signed_out_viewer_gets_401_not_a_login_page(client_for, radiologist, study):
    client = client_for(radiologist)
    client.post("/accounts/logout/")

    response = client.get(frame_url(instances(study)[0]), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert response.status_code == 401
    assert response.json() == {"error": "Your session has ended; sign in again."}


def test_outsider_gets_404(client_for, other_tenant_all_roles, study):
    response = client_for(other_tenant_all_roles).get(
        frame_url(instances(study)[0]), HTTP_ACCEPT=FRAMES_ACCEPT
    )

    assert response.status_code == 404


def test_another_clinics_instance_under_ones_own_clinic_is_404(
    client_for, radiologist, other_clinic, study
):
    foreign = ingest_study(other_clinic, synthetic_ct(slices=1, size=16))
    row = instances(foreign)[0]

    response = client_for(radiologist).get(frame_url(row, slug="north"), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert response.status_code == 404


def test_an_undecodable_codec_is_a_clear_406_audited_as_not_served(client_for, radiologist, clinic):
    # 12-bit JPEG Extended needs a codec (GDCM) this build does not ship.
    result = ingest(clinic, sample_bytes("JPEG-lossy.dcm"), name="lossy.dcm")
    row = (
        Instance.objects.for_tenant(clinic)
        .select_related("study", "series")
        .get(pk=result.instance_id)
    )

    response = client_for(radiologist).get(frame_url(row), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert response.status_code == 406
    assert "decode" in response.json()["error"]
    # The read was audited as it started; the event after it says nothing was sent.
    read, unserved = AuditEvent.objects.for_tenant(clinic).order_by("-seq")[:2][::-1]
    assert (read.action, read.outcome) == (Action.DICOMWEB_RETRIEVE, "success")
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert unserved.target_id == str(row.pk)
    assert unserved.detail == {"frames": 1, "reason": "not_decodable"}


def _originals_urls(study) -> dict[str, str]:
    first = instances(study)[0]
    base = f"/t/{study.tenant.slug}/dicomweb/studies/{study.study_uid}"
    series = f"{base}/series/{first.series.series_uid}"
    instance = f"{series}/instances/{first.sop_instance_uid}"
    return {
        "study": base,
        "series": series,
        "instance": instance,
        "bulkdata": f"{instance}/bulkdata/7FE00010",
    }


DICOM_ACCEPT = 'multipart/related; type="application/dicom"'


def _get_original(client, url: str):
    accept = FRAMES_ACCEPT if "/bulkdata/" in url else DICOM_ACCEPT
    return client.get(url, HTTP_ACCEPT=accept)


@pytest.mark.parametrize("route", ["study", "series", "instance", "bulkdata"])
def test_a_member_whose_role_does_not_download_gets_no_originals(
    client_for, technologist, study, route
):
    client = client_for(technologist)

    original = _get_original(client, _originals_urls(study)[route])
    frame = client.get(frame_url(instances(study)[0]), HTTP_ACCEPT=FRAMES_ACCEPT)

    assert original.status_code == 404
    assert frame.status_code == 200  # viewing is still theirs
    assert Action.DICOMWEB_RETRIEVE not in audit_actions(study.tenant)[:-1]


@pytest.mark.parametrize("route", ["study", "instance", "bulkdata"])
def test_a_member_who_downloads_gets_originals_only_after_a_recent_step_up(
    client_for, radiologist, study, route
):
    from tenants.mfa import MFA_AT

    client = client_for(radiologist)
    url = _originals_urls(study)[route]

    fresh = _get_original(client, url)
    session = client.session
    session[MFA_AT] -= 2 * 3600
    session.save()
    stale = _get_original(client, url)

    assert fresh.status_code == 200
    assert stale.status_code == 403
    assert "second-factor check" in stale.json()["error"]


def test_a_referring_physician_gets_originals_only_with_a_download_grant(
    client_for, referring_physician, study, radiologist
):
    url = _originals_urls(study)["instance"]
    study_grant(study=study, grantee=referring_physician, download=False, actor=TEST_ACTOR)
    view_only = _get_original(client_for(referring_physician), url)
    study_grant(study=study, grantee=referring_physician, download=True, actor=TEST_ACTOR)
    downloadable = _get_original(client_for(referring_physician), url)

    assert view_only.status_code == 404
    assert downloadable.status_code == 200


@pytest.mark.parametrize("route", ["study", "series", "instance", "bulkdata"])
def test_originals_taken_under_a_viewer_session_are_audited_as_retrieves(
    client_for, radiologist, study, route
):
    client = client_for(radiologist)
    session_id = open_viewer(client, study)
    first = instances(study)[0]
    client.get(metadata_url(study, first.series.series_uid), HTTP_X_VIEWER_SESSION=session_id)
    accept = FRAMES_ACCEPT if route == "bulkdata" else DICOM_ACCEPT
    before = audit_actions(study.tenant)

    original = client.get(
        _originals_urls(study)[route], HTTP_ACCEPT=accept, HTTP_X_VIEWER_SESSION=session_id
    )

    assert original.status_code == 200
    # The series was already viewed under the session: the download still leaves its own
    # event, not silence (or one more "viewed").
    assert audit_actions(study.tenant)[len(before) :] == [Action.DICOMWEB_RETRIEVE]


def test_a_viewer_opened_under_break_glass_names_the_grant(client_for, radiologist, study):
    marker = make_member(study.tenant, "radiologist", email="marker@north.example")
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    grant = break_glass_open(
        membership=membership_of(radiologist, study.tenant),
        target=study_target(study),
        reason="Emergency: patient in resus, prior imaging needed",
        actor=Actor.for_user(radiologist),
        now=timezone.now(),
    )

    open_viewer(client_for(radiologist), study)
    open_viewer(client_for(marker), study)

    opened = AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.VIEWER_OPENED)
    by_whom = {e.actor_id: e.detail.get("break_glass") for e in opened}
    assert by_whom == {str(radiologist.pk): str(grant.pk), str(marker.pk): None}
