"""The patient portal: invitations, linked records across clinics, own-study scope."""

from __future__ import annotations

import datetime as dt
import io
import re
import uuid
import zipfile

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from audit.models import Action, AuditEvent
from imaging.services import study_set_confidential
from sharing.invitations import InvitationInvalid, patient_invite
from sharing.models import PatientInvitation, PatientLink, ShareLink
from tenants.mfa import MFA_AT
from tenants.models import Membership, User
from tests.helpers import (
    PASSWORD,
    TEST_ACTOR,
    make_clinic,
    make_member,
    membership_of,
    page_body,
    sharer,
    verified_client,
)
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

BIRTH_DATE = "1970-01-01"  # synthetic_ct's PatientBirthDate
NEW_PASSWORD = "a long patient passphrase 42"
INVITE_LINK = re.compile(r"/portal/invitation/([A-Za-z0-9_-]{43})")


@pytest.fixture
def own_study(clinic):
    return ingest_study(
        clinic, synthetic_ct(slices=3, size=32, patient_name="Doe^Jane", patient_id="P-1")
    )


@pytest.fixture
def neighbour_study(clinic):
    """Another patient of the same clinic."""
    return ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John", patient_id="P-2")
    )


def invite(study, front_desk, email="jane@example.org", capture=None, tenant=None) -> str:
    """Invite through the service and return the token from the email."""
    sent = len(mail.outbox)
    with capture(execute=True):
        patient_invite(
            tenant=tenant or study.tenant,
            patients=[study.patient],
            email=email,
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )
    assert len(mail.outbox) == sent + 1
    return INVITE_LINK.search(mail.outbox[-1].body)[1]


def accept_as_new_patient(token: str, birth_date: str = BIRTH_DATE) -> Client:
    client = Client()
    assert client.get(f"/portal/invitation/{token}").status_code == 303
    assert client.post("/portal/invitation/", {"birth_date": birth_date}).status_code == 303
    response = client.post(
        "/portal/invitation/",
        {"full_name": "", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert response.status_code == 302, response.content[:500]
    return client


@pytest.fixture
def patient_client(own_study, front_desk, django_capture_on_commit_callbacks) -> Client:
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    return accept_as_new_patient(token)


# --- Front desk invites -----------------------------------------------------------------


def test_front_desk_invites_a_patient_by_email_without_phi_in_it(
    own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    client = client_for(front_desk)
    url = f"/t/north/patients/{own_study.patient.pk}/portal/"

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url, {"email": "Jane@Example.org", "patients": [str(own_study.patient.pk)]}
        )

    assert response.status_code == 302
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()
    assert invitation.email == "jane@example.org"
    assert invitation.token_wrapped is None and invitation.sent_at is not None
    [email] = mail.outbox
    assert email.to == ["jane@example.org"]
    token = INVITE_LINK.search(email.body)[1]
    assert invitation.token_sha256 not in email.body and token not in str(invitation.__dict__)
    assert "Doe" not in email.body and "P-1" not in email.body
    assert (
        AuditEvent.objects.for_tenant(own_study.tenant)
        .filter(action=Action.PATIENT_INVITED, target_id=str(own_study.patient.pk))
        .exists()
    )
    page = client.get(url)
    assert b"jane@example.org" in page.content and b"Waiting for the patient" in page.content


def test_inviting_needs_a_fresh_second_factor(own_study, front_desk):
    client = verified_client(front_desk)
    session = client.session
    session[MFA_AT] -= 3600  # verified at sign-in, an hour ago
    session.save()

    response = client.post(
        f"/t/north/patients/{own_study.patient.pk}/portal/",
        {"email": "jane@example.org", "patients": [str(own_study.patient.pk)]},
    )

    assert response.status_code == 302 and "/accounts/step-up/" in response["Location"]
    assert not PatientInvitation.objects.for_tenant(own_study.tenant).exists()


def test_only_front_desk_roles_invite(own_study, radiologist, client_for):
    response = client_for(radiologist).get(f"/t/north/patients/{own_study.patient.pk}/portal/")

    assert response.status_code == 403


def test_other_clinics_patient_is_a_404(front_desk, client_for, other_clinic):
    outsider = ingest_study(other_clinic, synthetic_ct(slices=1, size=16, patient_id="X-1"))
    client = client_for(front_desk)

    for url in (
        f"/t/north/patients/{outsider.patient.pk}/portal/",
        "/t/north/patients/00000000-0000-0000-0000-000000000000/portal/",
    ):
        assert client.get(url).status_code == 404


@pytest.mark.parametrize(
    ("email", "error"),
    [
        ("not an email", "email address"),
        ("a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".org", "at most 254 characters"),
    ],
)
def test_bad_email_is_refused_and_nothing_is_stored(own_study, front_desk, email, error):
    with pytest.raises(InvitationInvalid, match=error):
        patient_invite(
            tenant=own_study.tenant,
            patients=[own_study.patient],
            email=email,
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )
    assert not PatientInvitation.objects.for_tenant(own_study.tenant).exists()


def test_staff_cannot_invite_themselves_to_a_patients_records(own_study, front_desk):
    with pytest.raises(InvitationInvalid, match="cannot invite yourself"):
        patient_invite(
            tenant=own_study.tenant,
            patients=[own_study.patient],
            email=f"  {front_desk.email.upper()} ",
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )

    assert not PatientInvitation.objects.for_tenant(own_study.tenant).exists()


def test_staff_cannot_accept_an_invitation_they_sent_under_another_address(
    own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    token = invite(
        own_study,
        front_desk,
        email="desk.private@example.org",
        capture=django_capture_on_commit_callbacks,
    )
    front_desk.email = "desk.private@example.org"  # their own address, changed since
    front_desk.save()
    client = client_for(front_desk)
    client.get(f"/portal/invitation/{token}")
    client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})

    response = client.post("/portal/invitation/")

    assert response.status_code == 400 and b"invitation you sent" in response.content
    assert not PatientLink.objects.for_tenant(own_study.tenant).exists()


def test_records_alike_are_offered_but_only_chosen_ones_linked(
    clinic, own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    # The same person registered again under another ID; and a namesake born another day.
    twin = ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="DOE^JANE", patient_id="P-1b")
    )
    namesake = ingest_study(
        clinic,
        synthetic_ct(
            slices=1,
            size=16,
            patient_name="Doe^Jane",
            patient_id="P-9",
            tags={"PatientBirthDate": "19990909"},
        ),
    )
    client = client_for(front_desk)
    url = f"/t/north/patients/{own_study.patient.pk}/portal/"

    page = client.get(url).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            url,
            {
                "email": "jane@example.org",
                "patients": [str(own_study.patient.pk), str(twin.patient.pk)],
            },
        )
    patient = accept_as_new_patient(INVITE_LINK.search(mail.outbox[-1].body)[1])

    assert "P-1b" in page and "P-9" not in page
    # The twin's record was shown on the page too, and its view says so.
    shown = AuditEvent.objects.for_tenant(clinic).filter(action=Action.PATIENT_VIEWED).first()
    assert shown.detail["records"] == [str(twin.patient.pk)]
    listing = patient.get("/t/north/my/").content.decode()
    assert f"/my/studies/{twin.pk}/" in listing and f"/my/studies/{own_study.pk}/" in listing
    assert f"/my/studies/{namesake.pk}/" not in listing
    listed = AuditEvent.objects.for_tenant(clinic).filter(action=Action.WORKLIST_VIEWED).last()
    assert sorted(listed.detail["studies"]) == sorted([str(twin.pk), str(own_study.pk)])


# --- The invitee ------------------------------------------------------------------------


def test_invitation_creates_an_account_after_the_birth_date(
    own_study, front_desk, django_capture_on_commit_callbacks
):
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = Client()

    opened = client.get(f"/portal/invitation/{token}")
    challenge = client.get("/portal/invitation/")
    wrong = client.post("/portal/invitation/", {"birth_date": "1980-05-05"})
    right = client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})
    form = client.get("/portal/invitation/")
    weak = client.post(
        "/portal/invitation/", {"password": "password", "password_again": "password"}
    )
    created_by_weak = User.objects.filter(email="jane@example.org").exists()
    created = client.post(
        "/portal/invitation/", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
    )

    assert opened.status_code == 303 and opened["Location"] == "/portal/invitation/"
    assert opened["Referrer-Policy"] == "no-referrer"
    assert b"date of birth" in challenge.content
    assert wrong.status_code == 400 and b"does not match" in wrong.content
    assert right.status_code == 303
    assert b"Create your account" in form.content and b"jane@example.org" in form.content
    assert weak.status_code == 400 and not created_by_weak
    assert created.status_code == 302 and created["Location"] == "/t/north/my/"
    user = User.objects.get(email="jane@example.org")
    assert user.check_password(NEW_PASSWORD)
    membership = Membership.objects.for_tenant(own_study.tenant).get(user=user)
    assert membership.role_codes == {"patient"}
    assert (
        PatientLink.objects.for_tenant(own_study.tenant)
        .filter(user=user, patient=own_study.patient, revoked_at=None)
        .exists()
    )
    listing = client.get("/t/north/my/")
    assert listing.status_code == 200 and b"Synthetic CT" in listing.content
    # The token works once.
    again = Client().get(f"/portal/invitation/{token}")
    assert again.status_code == 410


def test_five_wrong_birth_dates_lock_the_invitation(
    own_study, front_desk, django_capture_on_commit_callbacks
):
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = Client()
    client.get(f"/portal/invitation/{token}")

    statuses = [
        client.post("/portal/invitation/", {"birth_date": f"1980-01-0{day}"}).status_code
        for day in range(1, 6)
    ]
    after = Client()
    after_open = after.get(f"/portal/invitation/{token}")

    assert statuses == [400, 400, 400, 400, 403]
    assert after_open.status_code == 403 and b"locked" in after_open.content
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()
    assert invitation.locked_at is not None
    assert not User.objects.filter(email="jane@example.org").exists()
    events = AuditEvent.objects.for_tenant(own_study.tenant)
    assert events.filter(action=Action.PATIENT_INVITATION_FAILED).count() == 5
    assert events.filter(action=Action.PATIENT_INVITATION_LOCKED).count() == 1


def test_unknown_withdrawn_and_expired_invitations(
    own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    withdrawn = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()
    response = client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/invitations/{invitation.pk}/withdraw/"
    )
    assert response.status_code == 302
    expired = invite(
        own_study, front_desk, email="j2@example.org", capture=django_capture_on_commit_callbacks
    )
    PatientInvitation.objects.for_tenant(own_study.tenant).filter(email="j2@example.org").update(
        created_at=timezone.now() - dt.timedelta(days=20),
        expires_at=timezone.now() - dt.timedelta(days=1),
    )

    unknown = Client().get("/portal/invitation/" + "A" * 43)
    gone = Client().get(f"/portal/invitation/{withdrawn}")
    late = Client().get(f"/portal/invitation/{expired}")

    assert unknown.status_code == 404 and gone.status_code == 404
    assert gone.content.replace(b"\n", b"") == unknown.content.replace(b"\n", b"")
    assert late.status_code == 410 and b"expired" in late.content


def test_refused_invitation_links_are_audited_where_the_privacy_officer_looks(
    own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()
    client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/invitations/{invitation.pk}/withdraw/"
    )
    probe = "A" * 43

    Client().get(f"/portal/invitation/{token}", REMOTE_ADDR="203.0.113.9")
    Client().get(f"/portal/invitation/{probe}", REMOTE_ADDR="198.51.100.4")

    refused = AuditEvent.objects.for_tenant(own_study.tenant).get(
        action=Action.PATIENT_INVITATION_REFUSED
    )
    assert refused.outcome == "denied"
    assert refused.detail == {"state": "revoked", "invitation": str(invitation.pk)}
    assert (refused.actor_id, refused.actor_ip) == (f"invitation:{invitation.pk}", "203.0.113.9")
    probed = AuditEvent.objects.unscoped(reason="the platform chain").get(
        tenant=None, action=Action.PATIENT_INVITATION_REFUSED
    )
    assert probed.detail == {"state": "unknown"} and probed.actor_ip == "198.51.100.4"
    stored = [str(e.detail) for e in AuditEvent.objects.unscoped(reason="every chain").all()]
    assert not any(token in text or probe in text for text in stored)


def test_an_invitation_withdrawn_after_it_was_opened_is_refused_and_audited(
    own_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()
    holder = Client(REMOTE_ADDR="203.0.113.8")
    assert holder.get(f"/portal/invitation/{token}").status_code == 303
    assert holder.post("/portal/invitation/", {"birth_date": BIRTH_DATE}).status_code == 303
    client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/invitations/{invitation.pk}/withdraw/"
    )

    response = holder.post(
        "/portal/invitation/",
        {"full_name": "", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )

    assert response.status_code == 404
    refused = AuditEvent.objects.for_tenant(own_study.tenant).get(
        action=Action.PATIENT_INVITATION_REFUSED
    )
    assert refused.detail == {
        "state": "revoked",
        "invitation": str(invitation.pk),
        "step": "session",
    }
    assert (refused.actor_id, refused.actor_ip) == (f"invitation:{invitation.pk}", "203.0.113.8")
    assert not User.objects.filter(email="jane@example.org").exists()


def test_invitation_lookups_are_rate_limited(client, db):
    statuses = [client.get("/portal/invitation/" + "B" * 43).status_code for _ in range(25)]

    assert statuses[:20] == [404] * 20 and statuses[-1] == 429


def test_existing_account_signs_in_and_sees_both_clinics(
    own_study, front_desk, patient_client, django_capture_on_commit_callbacks
):
    south = make_clinic("south", "South Radiology")
    south_desk = make_member(south, "front_desk", email="desk@south.example")
    south_study = ingest_study(
        south,
        synthetic_ct(
            slices=1, size=16, patient_name="Doe^Jane", tags={"StudyDescription": "Knee MR"}
        ),
    )
    token = invite(south_study, south_desk, capture=django_capture_on_commit_callbacks)
    user = User.objects.get(email="jane@example.org")
    visitor = Client()

    visitor.get(f"/portal/invitation/{token}")
    visitor.post("/portal/invitation/", {"birth_date": BIRTH_DATE})
    asks = visitor.get("/portal/invitation/")
    visitor.force_login(user)
    accept_page = visitor.get("/portal/invitation/")
    accepted = visitor.post("/portal/invitation/")
    listing = visitor.get("/t/south/my/").content.decode()

    assert b"Sign in to accept" in asks.content
    assert b"Accept invitation" in accept_page.content
    assert accepted.status_code == 302
    assert "North" in listing and "South Radiology" in listing
    assert "Synthetic CT" in listing and "Knee MR" in listing
    assert f"/t/north/my/studies/{own_study.pk}/" in listing
    assert f"/t/south/my/studies/{south_study.pk}/" in listing


def test_someone_else_signed_in_cannot_accept(
    own_study, front_desk, radiologist, client_for, django_capture_on_commit_callbacks
):
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = client_for(radiologist)
    client.get(f"/portal/invitation/{token}")
    client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})

    response = client.post("/portal/invitation/")

    assert response.status_code == 400 and b"another email address" in response.content
    assert not PatientLink.objects.for_tenant(own_study.tenant).exists()
    assert PatientInvitation.objects.for_tenant(own_study.tenant).get().accepted_at is None


# --- The patient's own studies ----------------------------------------------------------


def test_patient_asking_for_another_patients_study_of_the_same_clinic_gets_404(
    own_study, neighbour_study, patient_client
):
    def urls(study):
        series = study.series.first()
        instance = series.instances.first()
        root = f"/t/north/dicomweb/studies/{study.study_uid}"
        return [
            f"/t/north/my/studies/{study.pk}/",
            f"/t/north/my/studies/{study.pk}/viewer/",
            f"/t/north/my/studies/{study.pk}/download/",
            f"/t/north/my/studies/{study.pk}/share/",
            f"/t/north/studies/{study.pk}/",
            f"{root}/metadata",
            f"{root}/series/{series.series_uid}/instances/{instance.sop_instance_uid}/frames/1",
        ]

    own = [patient_client.get(url).status_code for url in urls(own_study)]
    other = [patient_client.get(url).status_code for url in urls(neighbour_study)]
    missing = patient_client.get("/t/north/my/studies/00000000-0000-0000-0000-000000000000/")
    search = patient_client.get("/t/north/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")

    assert own[:4] == [200, 200, 200, 200] and own[5:] == [200, 200]
    assert own[4] == 404  # staff pages stay staff pages
    assert other == [404] * 7
    assert missing.status_code == 404
    assert other_page_matches_missing(patient_client, neighbour_study)
    assert [s["0020000D"]["Value"][0] for s in search.json()] == [own_study.study_uid]


def other_page_matches_missing(client: Client, study) -> bool:
    theirs = client.get(f"/t/north/my/studies/{study.pk}/")
    missing = client.get("/t/north/my/studies/00000000-0000-0000-0000-000000000000/")
    return page_body(theirs) == page_body(missing)


def test_patient_downloads_their_study_as_dicom(own_study, patient_client):
    response = patient_client.get(f"/t/north/my/studies/{own_study.pk}/download/")

    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert len([n for n in archive.namelist() if n.endswith(".dcm")]) == 3
    assert (
        AuditEvent.objects.for_tenant(own_study.tenant)
        .filter(
            action=Action.STUDY_DOWNLOADED,
            target_id=str(own_study.pk),
            detail__via="patient_portal",
        )
        .exists()
    )


def test_access_history_shows_role_and_organisation_not_names(
    own_study, radiologist, client_for, patient_client
):
    client_for(radiologist).get(f"/t/north/studies/{own_study.pk}/")
    http(token_for(own_study.tenant, "dicomweb:read")).get(
        f"{BASE}/studies/{own_study.study_uid}/metadata"
    )
    patient_client.get(f"/t/north/my/studies/{own_study.pk}/")

    page = patient_client.get(f"/t/north/my/studies/{own_study.pk}/").content.decode()
    history = page[page.index('id="history"') :]

    assert "Radiologist" in history and "North" in history
    assert "Study details viewed" in history
    # In words a patient reads, not the protocol's.
    assert "Images read by a connected system or viewer" in history
    assert "DICOMweb" not in history
    assert radiologist.email not in page
    assert "You" in history  # the patient's own opening


def test_patient_shares_with_a_pin_and_revokes(own_study, patient_client):
    url = f"/t/north/my/studies/{own_study.pk}/share/"
    base = {"expires_days": 7, "max_uses": "", "recipient_email": "", "message": ""}

    no_challenge = patient_client.post(url, {**base, "challenge": "none"})
    no_pin = patient_client.post(url, {**base, "challenge": "pin", "pin": ""})
    created = patient_client.post(url, {**base, "challenge": "pin", "pin": "2468"})

    assert no_challenge.status_code == 400 and no_pin.status_code == 400
    assert created.status_code == 200
    share = ShareLink.objects.for_tenant(own_study.tenant).get()
    assert share.created_by.email == "jane@example.org" and not share.deidentify
    token = re.search(rb"/s/([A-Za-z0-9_-]{43})", created.content)[1].decode()
    recipient = Client()
    recipient.get(f"/s/{token}")
    assert recipient.post("/s/", {"answer": "2468"}).status_code == 303
    assert recipient.get("/s/").status_code == 200
    study_page = patient_client.get(f"/t/north/my/studies/{own_study.pk}/").content.decode()
    assert f"/t/north/shares/{share.pk}/" in study_page

    revoked = patient_client.post(f"/t/north/shares/{share.pk}/revoke/")

    assert revoked.status_code == 302
    assert recipient.get("/s/").status_code == 404


def test_a_patients_link_history_names_staff_by_role_without_their_address(
    own_study, patient_client, privacy_officer, client_for
):
    url = f"/t/north/my/studies/{own_study.pk}/share/"
    base = {"expires_days": 7, "max_uses": "", "recipient_email": "", "message": ""}
    patient_client.post(url, {**base, "challenge": "pin", "pin": "2468"}, REMOTE_ADDR="10.9.9.9")
    share = ShareLink.objects.for_tenant(own_study.tenant).get()
    officer = client_for(privacy_officer)
    officer.post(f"/t/north/shares/{share.pk}/revoke/", REMOTE_ADDR="10.1.2.3")

    patients_view = patient_client.get(f"/t/north/shares/{share.pk}/").content.decode()
    officers_view = officer.get(f"/t/north/shares/{share.pk}/").content.decode()

    assert "Privacy officer" in patients_view
    assert privacy_officer.email not in patients_view and "10.1.2.3" not in patients_view
    assert "10.9.9.9" in patients_view  # their own
    assert privacy_officer.email in officers_view and "10.1.2.3" in officers_view


def test_patient_cannot_manage_someone_elses_link(own_study, radiologist, patient_client):
    from sharing.services import share_create

    share, _ = share_create(
        study=own_study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(radiologist, own_study.tenant),
        pin="1234",
    )

    assert patient_client.get(f"/t/north/shares/{share.pk}/").status_code == 404
    assert patient_client.post(f"/t/north/shares/{share.pk}/revoke/").status_code == 404


def test_front_desk_ends_portal_access(own_study, front_desk, client_for, patient_client):
    link = PatientLink.objects.for_tenant(own_study.tenant).get()
    patient_client.post(
        f"/t/north/my/studies/{own_study.pk}/share/",
        {"expires_days": 7, "challenge": "pin", "pin": "2468", "message": ""},
    )
    share = ShareLink.objects.for_tenant(own_study.tenant).get()

    response = client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/accounts/{link.pk}/end/"
    )

    assert response.status_code == 302
    after = patient_client.get(f"/t/north/my/studies/{own_study.pk}/")
    assert after.status_code == 302 and after["Location"].startswith("/accounts/login/")
    membership = Membership.objects.for_tenant(own_study.tenant).get(user=link.user)
    assert not membership.is_active
    assert (
        AuditEvent.objects.for_tenant(own_study.tenant)
        .filter(action=Action.PATIENT_UNLINKED)
        .exists()
    )
    share.refresh_from_db()
    assert share.revoked_at is not None  # the patient's own links end with the access


def test_links_to_an_unlinked_record_leave_the_patients_pages(
    own_study, neighbour_study, front_desk, client_for, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        patient_invite(
            tenant=own_study.tenant,
            patients=[own_study.patient, neighbour_study.patient],
            email="jane@example.org",
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )
    patient = accept_as_new_patient(INVITE_LINK.search(mail.outbox[-1].body)[1])
    form = {"expires_days": 7, "challenge": "pin", "pin": "2468", "message": ""}
    for study in (own_study, neighbour_study):
        patient.post(f"/t/north/my/studies/{study.pk}/share/", form)
    shares = ShareLink.objects.for_tenant(own_study.tenant)
    mistaken = shares.get(study=own_study)
    kept = shares.get(study=neighbour_study)
    link = PatientLink.objects.for_tenant(own_study.tenant).get(patient=own_study.patient)

    client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/accounts/{link.pk}/end/"
    )

    listing = patient.get("/t/north/shares/").content.decode()
    assert f"/t/north/shares/{kept.pk}/" in listing  # still a patient of the clinic
    assert f"/t/north/shares/{mistaken.pk}/" not in listing
    missing = patient.get(f"/t/north/shares/{uuid.uuid4()}/")
    gone = patient.get(f"/t/north/shares/{mistaken.pk}/")
    assert gone.status_code == missing.status_code == 404
    assert patient.post(f"/t/north/shares/{mistaken.pk}/revoke/").status_code == 404
    assert patient.get(f"/t/north/shares/{kept.pk}/").status_code == 200


def test_clinic_policy_can_require_a_second_factor_for_patients(
    clinic, own_study, front_desk, django_capture_on_commit_callbacks
):
    from tenants.models import Role

    clinic.mfa_required_roles.add(Role.objects.get(code="patient"))
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = accept_as_new_patient(token)

    response = client.get("/t/north/my/")

    assert response.status_code == 302 and "/accounts/enrol/" in response["Location"]


def test_a_patient_without_a_second_factor_finds_the_security_page(patient_client):
    page = patient_client.get("/t/north/my/").content.decode()

    assert 'href="/accounts/security/"' in page
    security = patient_client.get("/accounts/security/").content.decode()
    assert 'href="/accounts/enrol/"' in security
    # Backup codes stand in for a second factor; with none yet there is nothing to back up.
    assert "/accounts/security/backup-codes/" not in security


def test_staff_past_the_password_only_are_offered_no_account_pages(
    password_only_client_for, radiologist
):
    page = password_only_client_for(radiologist).get("/accounts/enrol/").content.decode()

    assert "Set up" in page or "authenticator" in page.lower()
    assert 'href="/accounts/security/"' not in page


def test_staff_member_who_is_also_a_patient_sees_only_own_studies_in_the_portal(
    own_study, neighbour_study, front_desk, django_capture_on_commit_callbacks
):
    technologist = make_member(own_study.tenant, "technologist", email="jane@example.org")
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = verified_client(technologist)
    client.get(f"/portal/invitation/{token}")
    client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})
    client.post("/portal/invitation/")

    listing = client.get("/t/north/my/").content.decode()

    assert f"/my/studies/{own_study.pk}/" in listing
    assert f"/my/studies/{neighbour_study.pk}/" not in listing
    assert client.get(f"/t/north/my/studies/{neighbour_study.pk}/").status_code == 404
    assert technologist.check_password(PASSWORD)
    assert Membership.objects.for_tenant(own_study.tenant).get(user=technologist).role_codes == {
        "technologist",
        "patient",
    }


def test_ending_portal_access_leaves_a_deactivated_staff_member_deactivated(
    own_study, front_desk, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    technologist = make_member(own_study.tenant, "technologist", email="jane@example.org")
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = verified_client(technologist)
    client.get(f"/portal/invitation/{token}")
    client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})
    client.post("/portal/invitation/")
    membership = membership_of(technologist, own_study.tenant)
    client_for(tenant_admin).post(  # the clinic ends the member's access (they left)
        f"/t/north/admin/tenants/membership/{membership.pk}/change/",
        {"roles": ["technologist"]},  # the patient role is neither shown nor lost
    )
    assert not membership_of(technologist, own_study.tenant).is_active
    link = PatientLink.objects.for_tenant(own_study.tenant).get(user=technologist)

    response = client_for(front_desk).post(
        f"/t/north/patients/{own_study.patient.pk}/portal/accounts/{link.pk}/end/"
    )

    assert response.status_code == 302
    membership = membership_of(technologist, own_study.tenant)
    assert not membership.is_active and membership.role_codes == {"technologist"}
    assert client.get("/t/north/").status_code == 302  # signed out of the clinic


def test_invitation_email_goes_out_once_even_if_the_task_runs_again(
    own_study, front_desk, django_capture_on_commit_callbacks
):
    from sharing.tasks import patient_invitation_send

    invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    invitation = PatientInvitation.objects.for_tenant(own_study.tenant).get()

    again = patient_invitation_send(invitation_id=str(invitation.pk))

    assert again is False and len(mail.outbox) == 1
    emailed = AuditEvent.objects.for_tenant(own_study.tenant).filter(
        action=Action.PATIENT_INVITATION_EMAILED
    )
    assert [e.target_id for e in emailed] == [str(invitation.pk)]  # recorded once, as sent


def test_withdrawn_invitation_is_never_emailed(own_study, front_desk):
    from sharing.invitations import invitation_revoke
    from sharing.tasks import patient_invitation_send

    invitation = patient_invite(
        tenant=own_study.tenant,
        patients=[own_study.patient],
        email="jane@example.org",
        invited_by=front_desk,
        actor=TEST_ACTOR,
        now=timezone.now(),
    )  # the on-commit email has not run: the test's transaction is still open
    invitation_revoke(invitation=invitation, actor=TEST_ACTOR, now=timezone.now())

    sent = patient_invitation_send(invitation_id=str(invitation.pk))

    assert sent is False and mail.outbox == []


def test_a_patient_invitation_does_not_give_back_ended_staff_roles(
    own_study, front_desk, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    former = make_member(own_study.tenant, "radiologist", email="jane@example.org")
    membership = membership_of(former, own_study.tenant)
    client_for(tenant_admin).post(  # ended by the clinic; its roles stay on the row
        f"/t/north/admin/tenants/membership/{membership.pk}/change/", {"roles": ["radiologist"]}
    )
    membership.refresh_from_db()
    assert not membership.is_active and membership.role_codes == {"radiologist"}
    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = verified_client(former)
    client.get(f"/portal/invitation/{token}")
    client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})

    accepted = client.post("/portal/invitation/")

    assert accepted.status_code == 302
    membership = membership_of(former, own_study.tenant)
    assert membership.is_active and membership.role_codes == {"patient"}
    assert client.get("/t/north/").status_code == 403  # the worklist is staff's
    assert client.get(f"/t/north/studies/{own_study.pk}/").status_code == 404
    assert client.get(f"/t/north/my/studies/{own_study.pk}/").status_code == 200


def test_a_patients_own_confidential_study_is_not_masked_on_their_share_pages(
    own_study, radiologist, patient_client
):
    base = {"expires_days": 7, "max_uses": "", "recipient_email": "", "message": ""}
    patient_client.post(
        f"/t/north/my/studies/{own_study.pk}/share/", {**base, "challenge": "pin", "pin": "2468"}
    )
    share = ShareLink.objects.for_tenant(own_study.tenant).get()
    study_set_confidential(study=own_study, confidential=True, by=radiologist, actor=TEST_ACTOR)

    listing = patient_client.get("/t/north/shares/").content.decode()
    detail = patient_client.get(f"/t/north/shares/{share.pk}/").content.decode()

    assert "Doe, Jane" in listing and "Doe, Jane" in detail
    assert "Confidential study" not in listing + detail


def test_an_invitation_from_front_desk_who_left_is_suspended(
    own_study, front_desk, django_capture_on_commit_callbacks
):
    from tenants.services import membership_update

    token = invite(own_study, front_desk, capture=django_capture_on_commit_callbacks)
    client = Client()
    assert client.get(f"/portal/invitation/{token}").status_code == 303
    membership_update(
        membership=membership_of(front_desk, own_study.tenant),
        roles=["front_desk"],
        is_active=False,
        actor=TEST_ACTOR,
    )

    response = client.post("/portal/invitation/", {"birth_date": BIRTH_DATE})

    assert response.status_code == 410
    assert b"may no longer send invitations" in response.content
    assert not PatientLink.objects.for_tenant(own_study.tenant).exists()
    assert not User.objects.filter(email="jane@example.org").exists()
