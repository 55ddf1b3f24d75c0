"""Break-glass access: a reason is required, it expires, it is audited and reported."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from audit.actors import Actor, Target
from audit.models import Action, AuditEvent
from tenants.breakglass import BreakGlassRefused, break_glass_active, break_glass_open
from tenants.models import BreakGlassGrant
from tenants.services import membership_update
from tests.helpers import TEST_ACTOR, make_member, membership_of

STUDY = Target("imaging.study", str(uuid.UUID(int=7)))


@pytest.mark.django_db
@pytest.mark.parametrize("reason", ["", "   ", "urgent"])
def test_break_glass_refuses_an_empty_or_token_reason(clinic, radiologist, reason):
    with pytest.raises(BreakGlassRefused, match="clinical reason"):
        break_glass_open(
            membership=membership_of(radiologist, clinic),
            target=STUDY,
            reason=reason,
            actor=Actor.for_user(radiologist),
            now=timezone.now(),
        )

    assert not BreakGlassGrant.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_break_glass_is_audited_and_privacy_officers_are_emailed(
    clinic, radiologist, privacy_officer, mailoutbox, django_capture_on_commit_callbacks
):
    now = timezone.now()
    reason = "Patient unconscious in ER, prior CT needed for comparison"

    with django_capture_on_commit_callbacks(execute=True):
        grant = break_glass_open(
            membership=membership_of(radiologist, clinic),
            target=STUDY,
            reason=reason,
            actor=Actor.for_user(radiologist),
            now=now,
        )

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.BREAK_GLASS_OPENED)
    assert (event.target_type, event.target_id) == (STUDY.type, STUDY.id)
    assert event.detail["grant"] == str(grant.pk)
    assert reason not in str(event.detail)
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [privacy_officer.email]
    assert reason not in mailoutbox[0].body
    assert "/t/north/audit/" in mailoutbox[0].body


@pytest.mark.django_db
def test_a_clinic_without_a_privacy_officer_tells_its_tenant_admins(
    clinic,
    other_clinic,
    radiologist,
    tenant_admin,
    other_tenant_admin,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    departed = make_member(clinic, "privacy_officer", email="gone@north.example")
    membership_update(
        membership=membership_of(departed, clinic),
        roles=["privacy_officer"],
        is_active=False,
        actor=TEST_ACTOR,
    )

    with django_capture_on_commit_callbacks(execute=True):
        break_glass_open(
            membership=membership_of(radiologist, clinic),
            target=STUDY,
            reason="Trauma call, need prior imaging",
            actor=Actor.for_user(radiologist),
            now=timezone.now(),
        )

    [notice] = mailoutbox
    assert notice.to == [tenant_admin.email]  # not the departed officer, nor another clinic's


@pytest.mark.django_db
def test_with_nobody_to_tell_the_break_glass_notice_waits_for_someone(
    clinic, radiologist, mailoutbox, django_capture_on_commit_callbacks
):
    from tenants.services import notices_unsent_requeue

    with django_capture_on_commit_callbacks(execute=True):
        grant = break_glass_open(
            membership=membership_of(radiologist, clinic),
            target=STUDY,
            reason="Trauma call, need prior imaging",
            actor=Actor.for_user(radiologist),
            now=timezone.now(),
        )
    grant.refresh_from_db()
    unsent = grant.notified_at
    officer = make_member(clinic, "privacy_officer")

    with django_capture_on_commit_callbacks(execute=True):
        notices_unsent_requeue(now=timezone.now() + dt.timedelta(minutes=31))

    assert unsent is None
    [notice] = mailoutbox
    assert notice.to == [officer.email]


@pytest.mark.django_db
def test_notification_is_sent_once_even_if_the_task_runs_twice(
    clinic, radiologist, privacy_officer, mailoutbox
):
    from tenants.tasks import break_glass_notify

    grant = break_glass_open(
        membership=membership_of(radiologist, clinic),
        target=STUDY,
        reason="Trauma call, need prior imaging",
        actor=Actor.for_user(radiologist),
        now=timezone.now(),
    )

    sent = [break_glass_notify(tenant_id=str(clinic.pk), grant_id=str(grant.pk)) for _ in range(2)]

    assert sent == [1, 0]
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_break_glass_expires(clinic, radiologist):
    membership = membership_of(radiologist, clinic)
    now = timezone.now()
    break_glass_open(
        membership=membership,
        target=STUDY,
        reason="Stroke alert, comparing with prior MR",
        actor=Actor.for_user(radiologist),
        now=now,
    )

    assert break_glass_active(membership=membership, target=STUDY, now=now)
    assert not break_glass_active(
        membership=membership, target=STUDY, now=now + dt.timedelta(minutes=61)
    )
    other = Target("imaging.study", str(uuid.UUID(int=8)))
    assert not break_glass_active(membership=membership, target=other, now=now)


@pytest.mark.django_db
def test_roles_without_break_glass_cannot_open_it(clinic, front_desk):
    with pytest.raises(PermissionDenied):
        break_glass_open(
            membership=membership_of(front_desk, clinic),
            target=STUDY,
            reason="I would like to look at this study please",
            actor=Actor.for_user(front_desk),
            now=timezone.now(),
        )


@pytest.mark.django_db
def test_a_grant_stops_counting_once_the_role_that_broke_the_glass_is_taken_away(
    clinic, radiologist, tenant_admin, client_for
):
    from imaging.selectors import study_target
    from imaging.services import study_set_confidential
    from tenants.services import membership_update
    from tests.helpers import TEST_ACTOR
    from tests.imaging_tests.helpers import ingest_study, synthetic_ct

    study = ingest_study(clinic, synthetic_ct(slices=1, patient_name="Vip^Person"))
    study_set_confidential(study=study, confidential=True, by=tenant_admin, actor=TEST_ACTOR)
    membership = membership_of(radiologist, clinic)
    break_glass_open(
        membership=membership,
        target=study_target(study),
        reason="Patient unconscious in ER, prior CT needed for comparison",
        actor=Actor.for_user(radiologist),
        now=timezone.now(),
    )
    url = f"/t/{clinic.slug}/dicomweb/studies/{study.study_uid}/metadata"
    client = client_for(radiologist)
    assert client.get(url).status_code == 200

    membership_update(
        membership=membership, roles=["technologist"], is_active=True, actor=TEST_ACTOR
    )

    assert client.get(url).status_code == 404
    assert b"Vip" not in client.get(f"/t/{clinic.slug}/studies/{study.pk}/").content
    assert (
        break_glass_active(
            membership=membership_of(radiologist, clinic),
            target=study_target(study),
            now=timezone.now(),
        )
        is None
    )


@pytest.mark.django_db
def test_a_line_break_in_the_clinics_name_does_not_stop_the_privacy_officers_notice(
    clinic, radiologist, privacy_officer, mailoutbox
):
    from tenants.tasks import break_glass_notify

    # As a crafted POST to the clinic's policy form could save it.
    type(clinic).objects.filter(pk=clinic.pk).update(name="North\nImaging")
    clinic.refresh_from_db()
    grant = break_glass_open(
        membership=membership_of(radiologist, clinic),
        target=STUDY,
        reason="Trauma call, need prior imaging",
        actor=Actor.for_user(radiologist),
        now=timezone.now(),
    )

    sent = break_glass_notify(tenant_id=str(clinic.pk), grant_id=str(grant.pk))

    assert sent == 1
    [notice] = mailoutbox
    assert "\n" not in notice.subject and "North Imaging" in notice.subject


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["North\nImaging", "North\rImaging", "North\x00Imaging"])
def test_the_clinics_name_must_be_one_line(clinic, name):
    from django.core.exceptions import ValidationError

    from audit.models import AuditEvent
    from tenants.services import tenant_update_policy
    from tests.helpers import TEST_ACTOR

    with pytest.raises(ValidationError) as refused:
        tenant_update_policy(tenant=clinic, actor=TEST_ACTOR, changes={"name": name})

    assert set(refused.value.message_dict) == {"name"}
    clinic.refresh_from_db()
    assert "\n" not in clinic.name and "\r" not in clinic.name
    assert not AuditEvent.objects.for_tenant(clinic).filter(action="tenant.updated").exists()
