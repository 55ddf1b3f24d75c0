"""Share links follow the access they were made with: a confidential mark, break-glass,
a grant withdrawn."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import Action, AuditEvent
from imaging.selectors import study_target
from imaging.services import study_grant, study_grant_revoke, study_set_confidential
from sharing.invitations import invitation_accept, patient_invite, patient_link_revoke
from sharing.models import PatientLink, ShareLink
from sharing.selectors import break_glass_sole_grant
from sharing.services import ShareInvalid, share_create, share_revoke
from tenants.breakglass import break_glass_open
from tenants.roles import Perm
from tenants.tokens import api_token_create
from tests.helpers import TEST_ACTOR, make_member, membership_of, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

PIN = "4711"
REASON = "Unconscious patient in the ED, prior CT needed"


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=2, size=16, patient_name="Doe^Jane"))


@pytest.fixture
def marker(clinic):
    """The radiologist who marks studies confidential (and so keeps a grant on them)."""
    return make_member(clinic, "radiologist", email="marker@north.example")


def link_and_token(study, *, now=None, **options) -> tuple[ShareLink, str]:
    if user := options.pop("created_by", None):
        options.update(sharer(user, study.tenant))
    return share_create(
        study=study,
        actor=TEST_ACTOR,
        now=now or timezone.now(),
        challenge=ShareLink.Challenge.PIN,
        pin=PIN,
        **options,
    )


def link(study, *, now=None, **options) -> ShareLink:
    return link_and_token(study, now=now, **options)[0]


def link_by_token(study, *, now=None):
    token, _ = api_token_create(
        tenant=study.tenant,
        name="RIS",
        scopes=["shares:write", "dicomweb:read", "confidential:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    return link(study, now=now, created_by_token=token)


def linked_patient(study, front_desk, *, roles=("patient",), email="jane@example.org"):
    """A portal account linked to the study's patient record, through the real services."""
    user = make_member(study.tenant, *roles, email=email)
    invitation = patient_invite(
        tenant=study.tenant,
        patients=[study.patient],
        email=email,
        invited_by=front_desk,
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    invitation_accept(
        invitation=invitation, user=user, actor=Actor.for_user(user), now=timezone.now()
    )
    return user


def revocations(study) -> dict[str, AuditEvent]:
    return {
        e.detail["share"]: e
        for e in AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.SHARE_REVOKED)
    }


def fresh(share: ShareLink) -> ShareLink:
    return ShareLink.objects.for_tenant(share.tenant).get(pk=share.pk)


def study_url(study, suffix: str = "") -> str:
    return f"/t/{study.tenant.slug}/studies/{study.pk}/{suffix}"


# --- A study marked confidential -------------------------------------------------------------


def test_marking_confidential_revokes_live_staff_and_partner_links_each_audited(
    clinic, study, radiologist, marker
):
    staff = link(study, created_by=radiologist)
    partner = link_by_token(study)
    own = link(study, created_by=marker)
    other = ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))
    elsewhere = link(other, created_by=radiologist)
    now = timezone.now()

    revoked = study_set_confidential(
        study=study, confidential=True, by=marker, actor=Actor.for_user(marker), now=now
    )

    assert revoked == 3
    assert [fresh(s).revoked_at for s in (staff, partner, own)] == [now, now, now]
    assert fresh(elsewhere).revoked_at is None
    events = revocations(study)
    assert set(events) == {str(staff.pk), str(partner.pk), str(own.pk)}
    for event in events.values():
        assert event.detail["reason"] == "study_confidential"
        assert (event.actor_id, event.target_id) == (str(marker.pk), str(study.pk))


def test_links_already_ended_are_left_alone(study, radiologist, marker):
    long_ago = timezone.now() - dt.timedelta(days=10)
    expired = link(
        study, created_by=radiologist, now=long_ago, expires_at=long_ago + dt.timedelta(days=1)
    )
    withdrawn = link(study, created_by=radiologist)
    share_revoke(share=withdrawn, actor=TEST_ACTOR, now=long_ago + dt.timedelta(days=9))
    before = revocations(study)

    revoked = study_set_confidential(
        study=study, confidential=True, by=marker, actor=TEST_ACTOR, now=timezone.now()
    )

    assert revoked == 0
    assert fresh(expired).revoked_at is None
    assert fresh(withdrawn).revoked_at == long_ago + dt.timedelta(days=9)
    assert revocations(study).keys() == before.keys()


def test_the_patients_own_portal_link_stays(study, radiologist, front_desk, marker):
    patient = linked_patient(study, front_desk)
    theirs = link(study, created_by=patient)
    staff = link(study, created_by=radiologist)

    revoked = study_set_confidential(
        study=study, confidential=True, by=marker, actor=TEST_ACTOR, now=timezone.now()
    )

    assert revoked == 1
    assert fresh(theirs).revoked_at is None
    assert fresh(staff).revoked_at is not None
    assert set(revocations(study)) == {str(staff.pk)}


def from_portal(study, user) -> dict:
    return {"membership": membership_of(user, study.tenant), "as_patient": True}


def test_a_staff_member_who_is_the_patient_keeps_the_links_made_from_their_portal(
    study, front_desk, marker
):
    # "A colleague as the patient": the mark keeps other staff out, not the person.
    colleague = linked_patient(
        study, front_desk, roles=("radiologist",), email="colleague@north.example"
    )
    theirs = link(study, **from_portal(study, colleague))
    as_staff = link(study, created_by=colleague)  # from the study page, with staff access

    revoked = study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)

    assert revoked == 1
    assert fresh(theirs).revoked_at is None
    assert fresh(as_staff).revoked_at is not None


def test_a_member_who_becomes_the_patient_later_does_not_keep_their_staff_links(
    study, radiologist, front_desk, marker
):
    made_as_staff = link(study, created_by=radiologist)
    invitation = patient_invite(
        tenant=study.tenant,
        patients=[study.patient],
        email=radiologist.email,
        invited_by=front_desk,
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    invitation_accept(
        invitation=invitation,
        user=radiologist,
        actor=Actor.for_user(radiologist),
        now=timezone.now(),
    )
    assert membership_of(radiologist, study.tenant).has_perm(Perm.OWN_STUDIES)

    revoked = study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)

    assert revoked == 1
    assert fresh(made_as_staff).revoked_at is not None


def test_a_patient_account_linked_to_another_record_is_not_this_studys_patient(
    clinic, study, front_desk, marker
):
    neighbour = ingest_study(
        clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John", patient_id="P-2")
    )
    other_patient = linked_patient(neighbour, front_desk, email="john@example.org")
    # Neither the portal nor `share_create` lets them share it; a link left from before
    # the service asked is what this models.
    stray = link(study, created_by=marker)
    ShareLink.objects.for_tenant(clinic).filter(pk=stray.pk).update(created_by=other_patient)

    revoked = study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)

    assert revoked == 1
    assert fresh(stray).revoked_at is not None


def test_marking_again_or_removing_the_mark_revokes_and_revives_nothing(study, radiologist, marker):
    before = link(study, created_by=radiologist)
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    # Made afterwards by the marker, who holds an explicit grant on the study.
    after = link(study, created_by=marker)

    again = study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    unmarked = study_set_confidential(
        study=study, confidential=False, by=marker, actor=TEST_ACTOR, now=timezone.now()
    )

    assert again == unmarked == 0
    assert fresh(after).revoked_at is None
    assert fresh(before).revoked_at is not None


def test_a_link_being_made_from_a_study_read_before_the_mark_is_refused(study, radiologist, marker):
    stale = type(study).objects.for_tenant(study.tenant).select_related("patient").get(pk=study.pk)
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)

    with pytest.raises(ShareInvalid, match="just marked confidential"):
        link(stale, created_by=radiologist)

    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_a_revoked_link_is_refused_to_its_recipient(client, study, radiologist, marker):
    _, raw = link_and_token(study, created_by=radiologist)

    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)

    assert client.get(f"/s/{raw}").status_code == 404


@pytest.mark.parametrize(
    ("links", "message"),
    [
        (1, "1 live share link to this study was revoked"),
        (2, "2 live share links to this study were revoked"),
    ],
)
def test_the_page_that_marks_the_study_says_how_many_links_were_revoked(
    client_for, study, radiologist, marker, links, message
):
    for _ in range(links):
        link(study, created_by=radiologist)

    response = client_for(marker).post(
        study_url(study, "confidential/"), {"confidential": "1"}, follow=True
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ShareLink.objects.for_tenant(study.tenant).filter(revoked_at=None).exists()


# --- A grant withdrawn -------------------------------------------------------------------


def test_withdrawing_the_grant_a_member_saw_the_study_by_revokes_their_links_to_it(
    clinic, confidential, radiologist, marker
):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    theirs = link(confidential, created_by=radiologist)
    markers = link(confidential, created_by=marker)
    other = ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))
    elsewhere = link(other, created_by=radiologist)
    now = timezone.now()

    withdrawn = study_grant_revoke(
        study=confidential, grantee=radiologist, actor=Actor.for_user(marker), now=now
    )

    assert (withdrawn.still_opens, withdrawn.revoked) == (False, 1)
    assert fresh(theirs).revoked_at == now
    assert fresh(markers).revoked_at is None
    assert fresh(elsewhere).revoked_at is None
    (event,) = revocations(confidential).values()
    assert event.detail == {"share": str(theirs.pk), "reason": "grant_withdrawn"}
    assert event.actor_id == str(marker.pk)


def test_a_grantee_who_is_the_patient_keeps_their_portal_links_when_the_grant_is_withdrawn(
    confidential, front_desk, marker
):
    # They still see the study from their patient portal: the grant was not their only way.
    colleague = linked_patient(
        confidential, front_desk, roles=("radiologist",), email="colleague@north.example"
    )
    study_grant(study=confidential, grantee=colleague, download=False, actor=TEST_ACTOR)
    theirs = link(confidential, **from_portal(confidential, colleague))
    as_grantee = link(confidential, created_by=colleague)

    withdrawn = study_grant_revoke(
        study=confidential, grantee=colleague, actor=Actor.for_user(marker)
    )

    assert withdrawn.revoked == 1
    assert fresh(theirs).revoked_at is None
    assert fresh(as_grantee).revoked_at is not None


def test_a_member_whose_role_lists_the_study_anyway_keeps_their_links(study, radiologist):
    study_grant(study=study, grantee=radiologist, download=True, actor=TEST_ACTOR)
    theirs = link(study, created_by=radiologist)

    withdrawn = study_grant_revoke(study=study, grantee=radiologist, actor=TEST_ACTOR)

    assert (withdrawn.still_opens, withdrawn.revoked, withdrawn.shortened) == (True, 0, 0)
    assert fresh(theirs).revoked_at is None
    assert fresh(theirs).expires_at == theirs.expires_at


def test_the_recipient_of_a_link_revoked_with_the_grant_gets_404(client, confidential, radiologist):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    _, raw = link_and_token(confidential, created_by=radiologist)

    study_grant_revoke(study=confidential, grantee=radiologist, actor=TEST_ACTOR)

    assert client.get(f"/s/{raw}").status_code == 404


def test_the_study_page_says_how_many_links_went_with_the_grant(
    client_for, confidential, radiologist, marker
):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    link(confidential, created_by=radiologist)
    link(confidential, created_by=radiologist)

    response = client_for(marker).post(
        study_url(confidential, f"grants/{radiologist.pk}/revoke/"), follow=True
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "can no longer open this study. 2 live share links they made of it were revoked." in page
    assert not ShareLink.objects.for_tenant(confidential.tenant).filter(revoked_at=None).exists()


def test_a_grant_withdrawn_after_the_makers_access_was_checked_makes_no_link(
    confidential, radiologist
):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    membership = membership_of(radiologist, confidential.tenant)
    # The share view has checked access; the withdrawal commits before share_create runs.
    study_grant_revoke(study=confidential, grantee=radiologist, actor=TEST_ACTOR)

    with pytest.raises(ShareInvalid, match="no longer have access to this study"):
        link(confidential, created_by=radiologist, membership=membership)

    assert not ShareLink.objects.for_tenant(confidential.tenant).exists()
    assert not AuditEvent.objects.for_tenant(confidential.tenant).filter(
        action=Action.SHARE_CREATED
    )


def test_a_record_unlinked_after_the_patients_check_makes_no_link(study, front_desk):
    user = linked_patient(study, front_desk)
    membership = membership_of(user, study.tenant)
    record = PatientLink.objects.for_tenant(study.tenant).get(user=user)
    # The portal's share view has found the study the patient's; the unlinking commits
    # before share_create runs.
    patient_link_revoke(link=record, actor=TEST_ACTOR, now=timezone.now())

    with pytest.raises(ShareInvalid, match="no longer in your portal"):
        link(study, created_by=user, membership=membership, as_patient=True)

    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_a_linked_patient_shares_their_own_study(study, front_desk):
    user = linked_patient(study, front_desk)

    share = link(
        study, created_by=user, membership=membership_of(user, study.tenant), as_patient=True
    )

    assert share.created_by == user and share.revoked_at is None


def test_links_of_a_member_left_with_break_glass_alone_end_with_it(
    confidential, radiologist, marker, client_for
):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    theirs = link(confidential, created_by=radiologist)
    short = link(
        confidential, created_by=radiologist, expires_at=timezone.now() + dt.timedelta(minutes=5)
    )
    grant = break_glass(confidential, radiologist)
    assert theirs.expires_at > grant.expires_at > short.expires_at
    now = timezone.now()

    withdrawn = study_grant_revoke(
        study=confidential, grantee=radiologist, actor=Actor.for_user(marker), now=now
    )

    assert (withdrawn.still_opens, withdrawn.revoked, withdrawn.shortened) == (True, 0, 1)
    assert fresh(theirs).expires_at == grant.expires_at and fresh(theirs).revoked_at is None
    assert fresh(short).expires_at == short.expires_at
    event = AuditEvent.objects.for_tenant(confidential.tenant).get(action=Action.SHARE_SHORTENED)
    assert event.actor_id == str(marker.pk) and event.target_id == str(confidential.pk)
    assert event.detail == {
        "share": str(theirs.pk),
        "reason": "grant_withdrawn",
        "break_glass": str(grant.pk),
        "expires_at": grant.expires_at.isoformat(),
        "was": theirs.expires_at.isoformat(),
    }
    history = client_for(radiologist).get(f"/t/{confidential.tenant.slug}/shares/{theirs.pk}/")
    assert "Share link shortened" in history.content.decode()


def test_the_study_page_says_when_links_now_end_with_break_glass(
    client_for, confidential, radiologist, marker
):
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)
    link(confidential, created_by=radiologist)
    break_glass(confidential, radiologist)

    response = client_for(marker).post(
        study_url(confidential, f"grants/{radiologist.pk}/revoke/"), follow=True
    )

    page = response.content.decode()
    assert "no longer has a grant on this study; their role or break-glass access" in page
    assert "1 live share link they made of it now ends when their break-glass access does." in page


# --- Break-glass -------------------------------------------------------------------------


@pytest.fixture
def confidential(study, marker):
    study_set_confidential(study=study, confidential=True, by=marker, actor=TEST_ACTOR)
    return study


def break_glass(study, user):
    return break_glass_open(
        membership=membership_of(user, study.tenant),
        target=study_target(study),
        reason=REASON,
        actor=Actor.for_user(user),
        now=timezone.now(),
    )


def share_form(study) -> dict:
    return {
        "expires_days": 7,
        "challenge": "pin",
        "pin": PIN,
        "max_uses": "",
        "recipient_email": "",
        "message": "",
    }


def created_event(study) -> AuditEvent:
    return AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_CREATED)


def test_a_link_made_through_break_glass_alone_ends_with_the_grant_and_says_so(
    client_for, confidential, radiologist
):
    grant = break_glass(confidential, radiologist)

    response = client_for(radiologist).post(
        study_url(confidential, "share/"), share_form(confidential)
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Shortened:" in page and "through break-glass" in page
    share = ShareLink.objects.for_tenant(confidential.tenant).get()
    assert share.expires_at == grant.expires_at
    detail = created_event(confidential).detail
    assert detail["capped_by_break_glass"] == detail["break_glass"] == str(grant.pk)
    assert detail["expires_at"] == grant.expires_at.isoformat()


def test_the_share_form_warns_before_the_link_is_made(client_for, confidential, radiologist):
    grant = break_glass(confidential, radiologist)

    page = client_for(radiologist).get(study_url(confidential, "share/")).content.decode()

    assert "Your access to this study is through break-glass" in page
    assert grant.expires_at.strftime("%Y-%m-%d %H:%M") in page


def test_an_earlier_expiry_than_the_grant_is_kept_and_the_grant_recorded(confidential, radiologist):
    grant = break_glass(confidential, radiologist)
    now = timezone.now()
    asked = now + dt.timedelta(minutes=5)

    share = link(
        confidential,
        now=now,
        created_by=radiologist,
        expires_at=asked,
        membership=membership_of(radiologist, confidential.tenant),
    )

    assert share.expires_at == asked
    detail = created_event(confidential).detail
    assert detail["break_glass"] == str(grant.pk)
    assert "capped_by_break_glass" not in detail


def test_a_grant_ended_meanwhile_makes_no_link(confidential, radiologist):
    grant = break_glass(confidential, radiologist)

    with pytest.raises(ShareInvalid, match="no longer have access to this study"):
        link(
            confidential,
            now=grant.expires_at + dt.timedelta(seconds=1),
            created_by=radiologist,
            membership=membership_of(radiologist, confidential.tenant),
        )

    assert not ShareLink.objects.for_tenant(confidential.tenant).exists()


def test_once_granted_the_study_too_the_member_is_no_longer_capped(
    client_for, confidential, radiologist
):
    grant = break_glass(confidential, radiologist)
    client = client_for(radiologist)
    capped = client.post(study_url(confidential, "share/"), share_form(confidential))
    study_grant(study=confidential, grantee=radiologist, download=False, actor=TEST_ACTOR)

    full = client.post(study_url(confidential, "share/"), share_form(confidential))

    assert "Shortened:" in capped.content.decode()
    assert "Shortened:" not in full.content.decode()
    first, second = ShareLink.objects.for_tenant(confidential.tenant).order_by("created_at")
    assert first.expires_at == grant.expires_at
    assert second.expires_at - second.created_at == dt.timedelta(days=7)
    latest = AuditEvent.objects.for_tenant(confidential.tenant).filter(
        action=Action.SHARE_CREATED, detail__share=str(second.pk)
    )
    assert "break_glass" not in latest.get().detail


def test_only_access_that_rests_on_break_glass_alone_has_a_sole_grant(
    clinic, confidential, radiologist
):
    plain = ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))
    break_glass(plain, radiologist)  # a study the radiologist's role opens anyway
    membership = membership_of(radiologist, clinic)
    before = break_glass_sole_grant(membership=membership, study=confidential, now=timezone.now())
    grant = break_glass(confidential, radiologist)
    now = timezone.now()

    during = break_glass_sole_grant(membership=membership, study=confidential, now=now)
    on_plain = break_glass_sole_grant(membership=membership, study=plain, now=now)

    assert before is None  # no access at all
    assert during == grant
    assert on_plain is None


def test_the_sole_grant_is_the_one_that_ends_last(confidential, radiologist):
    first = break_glass(confidential, radiologist)
    second = break_glass(confidential, radiologist)
    membership = membership_of(radiologist, confidential.tenant)

    sole = break_glass_sole_grant(membership=membership, study=confidential, now=timezone.now())
    after = break_glass_sole_grant(membership=membership, study=confidential, now=second.expires_at)

    assert second.expires_at >= first.expires_at and sole == second
    assert after is None  # no access left at all


def test_a_link_needs_one_maker_of_the_studys_clinic(
    confidential, radiologist, other_clinic, other_tenant_all_roles
):
    elsewhere = membership_of(other_tenant_all_roles, other_clinic)
    token, _ = api_token_create(
        tenant=confidential.tenant,
        name="RIS",
        scopes=["shares:write", "dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )

    with pytest.raises(ValueError, match="another clinic"):
        link(confidential, membership=elsewhere)
    with pytest.raises(ValueError, match="one of them"):
        link(confidential)
    with pytest.raises(ValueError, match="one of them"):
        link(
            confidential,
            membership=membership_of(radiologist, confidential.tenant),
            created_by_token=token,
        )

    assert not ShareLink.objects.for_tenant(confidential.tenant).exists()


def test_links_made_before_the_flag_keep_the_treatment_they_had(study, radiologist, front_desk):
    from django.apps import apps

    backfill = importlib.import_module("sharing.migrations.0004_share_made_as_patient").forward
    patient = linked_patient(study, front_desk)
    theirs = link(study, created_by=patient)
    staff = link(study, created_by=radiologist)
    partner = link_by_token(study)
    ShareLink.objects.for_tenant(study.tenant).update(made_as_patient=False)  # as stored before

    backfill(apps, None)

    assert (fresh(theirs).made_as_patient, fresh(staff).made_as_patient) == (True, False)
    assert fresh(partner).made_as_patient is False
