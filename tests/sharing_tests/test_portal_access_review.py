"""Portal access that front desk could have given to themselves is put before the
privacy officers: flagged in the audit log and emailed to them, once."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from audit.actors import Actor
from audit.models import Action, AuditEvent
from sharing.invitations import invitation_accept, patient_invite
from sharing.models import PatientInvitation
from sharing.services import notices_unsent_requeue
from sharing.tasks import patient_access_review_notify
from tenants.models import User
from tests.helpers import make_member
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_patient_portal import (
    BIRTH_DATE,
    INVITE_LINK,
)

CLINIC_NETWORK = "203.0.113.10"
HOME = "198.51.100.7"
PASSWORD = "a long patient passphrase 42"
FLAGGED = Action.PATIENT_ACCESS_FLAGGED


@pytest.fixture
def jane(clinic):
    return ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane", patient_id="P-1")
    ).patient


@pytest.fixture
def john(clinic):
    return ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John", patient_id="P-2")
    ).patient


def invite_from_desk(patients, front_desk, email: str, capture, ip: str = CLINIC_NETWORK):
    """Invite as front desk at the clinic and return the token from the email."""
    with capture(execute=True):
        invitation = patient_invite(
            tenant=patients[0].tenant,
            patients=patients,
            email=email,
            invited_by=front_desk,
            actor=Actor.for_user(front_desk, ip=ip),
            now=timezone.now(),
        )
    token = INVITE_LINK.search(mail.outbox[-1].body)[1]
    return invitation, token


def accept_directly(invitation, user: User, capture, ip: str) -> None:
    with capture(execute=True):
        invitation_accept(
            invitation=invitation,
            user=user,
            actor=Actor.for_user(user, ip=ip),
            now=timezone.now(),
        )


def flagged_acceptance(patient, front_desk, capture) -> PatientInvitation:
    """An address invited from the clinic's network and accepted there."""
    invitation, _ = invite_from_desk([patient], front_desk, "x@example.org", capture)
    user = User.objects.create_user(email="x@example.org", password=PASSWORD)
    accept_directly(invitation, user, capture, ip=CLINIC_NETWORK)
    return invitation


def flags(tenant) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_tenant(tenant).filter(action=FLAGGED))


def notices() -> list:
    return [m for m in mail.outbox if "to review" in m.subject]


def test_accepting_at_the_clinic_network_flags_it_for_the_privacy_officers(
    clinic, jane, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    invitation, token = invite_from_desk(
        [jane], front_desk, "desk.private@example.org", django_capture_on_commit_callbacks
    )
    visitor = Client(REMOTE_ADDR=CLINIC_NETWORK)

    with django_capture_on_commit_callbacks(execute=True):
        visitor.get(f"/portal/invitation/{token}")
        visitor.post("/portal/invitation/", {"birth_date": BIRTH_DATE})
        accepted = visitor.post(
            "/portal/invitation/",
            {"full_name": "", "password": PASSWORD, "password_again": PASSWORD},
        )

    assert accepted.status_code == 302  # flagged for review, not refused
    [event] = flags(clinic)
    account = User.objects.get(email="desk.private@example.org")
    assert event.target_id == str(invitation.pk)
    assert event.detail == {
        "invitation": str(invitation.pk),
        "user": str(account.pk),
        "invited_by": str(front_desk.pk),
        "reasons": ["inviter_network"],
    }
    [notice] = notices()
    assert notice.to == [privacy_officer.email]
    assert str(invitation.pk) in notice.body and str(front_desk.pk) in notice.body
    assert "network address the invitation was sent from" in notice.body
    assert "/t/north/audit/?action=patient.access_flagged" in notice.body
    # Names, IDs and the invited address stay in the portal.
    for phi in ("Doe", "Jane", "P-1", "desk.private", BIRTH_DATE):
        assert phi not in notice.body and phi not in notice.subject


def test_a_patient_accepting_from_elsewhere_is_not_flagged(
    clinic, jane, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    invitation, _ = invite_from_desk(
        [jane], front_desk, "jane@example.org", django_capture_on_commit_callbacks
    )
    user = User.objects.create_user(email="jane@example.org", password=PASSWORD)

    accept_directly(invitation, user, django_capture_on_commit_callbacks, ip=HOME)

    invitation.refresh_from_db()
    assert invitation.accepted_at is not None
    assert invitation.review_reasons == [] and flags(clinic) == [] and notices() == []


@pytest.mark.parametrize(
    ("sent_from", "accepted_from", "flagged"),
    [
        ("2001:db8:1:2::10", "2001:db8:1:2:abcd::99", True),  # one site's /64
        ("2001:db8:1:2::10", "2001:db8:1:3::10", False),
        ("203.0.113.10", "203.0.113.11", False),  # a neighbour, not the clinic's NAT
        # A dual-stack server writes IPv4 peers as IPv6: still one address each.
        ("203.0.113.10", "::ffff:203.0.113.10", True),
        ("::ffff:203.0.113.10", "::ffff:198.51.100.7", False),
        (None, "203.0.113.10", False),  # sent by a system: nowhere to compare
    ],
)
def test_the_network_is_one_ipv4_address_or_one_ipv6_prefix(
    clinic, jane, front_desk, django_capture_on_commit_callbacks, sent_from, accepted_from, flagged
):
    with django_capture_on_commit_callbacks(execute=True):
        invitation = patient_invite(
            tenant=clinic,
            patients=[jane],
            email="jane@example.org",
            invited_by=front_desk,
            actor=Actor.for_user(front_desk, ip=sent_from),
            now=timezone.now(),
        )
    user = User.objects.create_user(email="jane@example.org", password=PASSWORD)

    accept_directly(invitation, user, django_capture_on_commit_callbacks, ip=accepted_from)

    invitation.refresh_from_db()
    assert (invitation.review_reasons == ["inviter_network"]) is flagged


def test_a_staff_account_accepting_is_flagged(
    clinic, jane, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    # A colleague invited the technologist, who is also a patient: allowed, and reviewed.
    technologist = make_member(clinic, "technologist", email="tech@north.example")
    invitation, _ = invite_from_desk(
        [jane], front_desk, technologist.email, django_capture_on_commit_callbacks
    )

    accept_directly(invitation, technologist, django_capture_on_commit_callbacks, ip=HOME)

    [event] = flags(clinic)
    assert event.detail["reasons"] == ["staff_account"]
    assert len(notices()) == 1


def test_one_account_holding_two_peoples_records_is_flagged_on_the_second(
    clinic, jane, john, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    first, _ = invite_from_desk(
        [jane], front_desk, "x@example.org", django_capture_on_commit_callbacks
    )
    account = User.objects.create_user(email="x@example.org", password=PASSWORD)
    accept_directly(first, account, django_capture_on_commit_callbacks, ip=HOME)
    second, _ = invite_from_desk(
        [john], front_desk, "x@example.org", django_capture_on_commit_callbacks
    )

    accept_directly(second, account, django_capture_on_commit_callbacks, ip=HOME)

    [event] = flags(clinic)
    assert event.target_id == str(second.pk)
    assert event.detail["reasons"] == ["several_people"]
    first.refresh_from_db()
    assert first.review_reasons == []


def test_one_persons_records_alike_are_not_several_people(
    clinic, jane, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    # The same person registered again under another ID: same name and birth date.
    again = ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="DOE^JANE", patient_id="P-1b")
    ).patient
    invitation, _ = invite_from_desk(
        [jane, again], front_desk, "jane@example.org", django_capture_on_commit_callbacks
    )
    user = User.objects.create_user(email="jane@example.org", password=PASSWORD)

    accept_directly(invitation, user, django_capture_on_commit_callbacks, ip=HOME)

    assert flags(clinic) == [] and notices() == []


def test_the_notice_goes_once_and_only_to_this_clinics_privacy_officers(
    clinic,
    other_clinic,
    jane,
    front_desk,
    privacy_officer,
    django_capture_on_commit_callbacks,
):
    other_officer = make_member(other_clinic, "privacy_officer")
    invitation = flagged_acceptance(jane, front_desk, django_capture_on_commit_callbacks)

    again = patient_access_review_notify(invitation_id=str(invitation.pk))

    assert again == 0
    [notice] = notices()
    assert other_officer.email not in notice.to and front_desk.email not in notice.to
    assert flags(other_clinic) == []


def test_a_lost_notice_is_sent_by_the_recovery_job(
    clinic, jane, front_desk, privacy_officer, django_capture_on_commit_callbacks
):
    invitation, _ = invite_from_desk(
        [jane], front_desk, "x@example.org", django_capture_on_commit_callbacks
    )
    user = User.objects.create_user(email="x@example.org", password=PASSWORD)
    invitation_accept(  # committed without its on-commit send: the message was lost
        invitation=invitation,
        user=user,
        actor=Actor.for_user(user, ip=CLINIC_NETWORK),
        now=timezone.now(),
    )
    assert notices() == []

    with django_capture_on_commit_callbacks(execute=True):
        queued = notices_unsent_requeue(now=timezone.now() + dt.timedelta(minutes=31))
    with django_capture_on_commit_callbacks(execute=True):
        notices_unsent_requeue(now=timezone.now() + dt.timedelta(minutes=32))

    assert queued == 1
    assert len(notices()) == 1
    invitation.refresh_from_db()
    assert invitation.review_notified_at is not None


def test_the_privacy_officer_finds_flagged_access_in_the_audit_log_and_outsiders_do_not(
    clinic,
    other_clinic,
    jane,
    front_desk,
    privacy_officer,
    client_for,
    django_capture_on_commit_callbacks,
):
    other_officer = make_member(other_clinic, "privacy_officer")
    invitation = flagged_acceptance(jane, front_desk, django_capture_on_commit_callbacks)
    query = f"?action={FLAGGED.value}"

    ours = client_for(privacy_officer).get(f"/t/north/audit/{query}")
    theirs = client_for(other_officer).get(f"/t/south/audit/{query}")
    desk = client_for(front_desk).get(f"/t/north/audit/{query}")

    assert ours.status_code == 200 and str(invitation.pk) in ours.content.decode()
    assert theirs.status_code == 200 and str(invitation.pk) not in theirs.content.decode()
    assert desk.status_code == 403


def test_a_clinic_without_a_privacy_officer_tells_its_tenant_admins(
    clinic, jane, front_desk, tenant_admin, django_capture_on_commit_callbacks
):
    invitation, _ = invite_from_desk(
        [jane], front_desk, "x@example.org", django_capture_on_commit_callbacks
    )
    user = User.objects.create_user(email="x@example.org", password=PASSWORD)

    accept_directly(invitation, user, django_capture_on_commit_callbacks, ip=CLINIC_NETWORK)

    [notice] = notices()
    assert notice.to == [tenant_admin.email]


def test_with_nobody_to_tell_the_notice_waits_until_the_clinic_has_someone(
    clinic, jane, front_desk, django_capture_on_commit_callbacks
):
    invitation = flagged_acceptance(jane, front_desk, django_capture_on_commit_callbacks)
    invitation.refresh_from_db()
    unsent = invitation.review_notified_at
    officer = make_member(clinic, "privacy_officer")

    with django_capture_on_commit_callbacks(execute=True):
        notices_unsent_requeue(now=timezone.now() + dt.timedelta(minutes=31))

    assert unsent is None
    [notice] = notices()
    assert notice.to == [officer.email]
