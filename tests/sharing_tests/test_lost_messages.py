"""Share and patient-portal emails whose task message was lost are sent later, once.

Each arrangement commits its change without running the on-commit send, as when the
broker could not be reached at the commit.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from sharing.invitations import patient_invite
from sharing.models import ShareLink
from sharing.services import notices_unsent_requeue, share_revoke
from sharing.tasks import notices_unsent_requeue as notices_unsent_requeue_task
from tenants.models import Tenant
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_share_links import make_share, open_link

LATER = dt.timedelta(minutes=31)


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16))


def _requeue(capture, *, now: dt.datetime) -> int:
    with capture(execute=True):
        return notices_unsent_requeue(now=now)


def _lose_a_patient_invitation(study, front_desk) -> None:
    patient_invite(
        tenant=study.tenant,
        patients=[study.patient],
        email="jane@example.org",
        invited_by=front_desk,
        actor=TEST_ACTOR,
        now=timezone.now(),
    )


def test_every_lost_share_and_patient_email_goes_later_and_only_once(
    study,
    radiologist,
    front_desk,
    django_capture_on_commit_callbacks,
):
    make_share(study, radiologist, recipient_email="doctor@example.org")
    _, opened_token = make_share(study, radiologist, notify_on_first_open=True)
    open_link(Client(), opened_token)
    _, locked_token = make_share(study, radiologist)
    guesser = Client()
    guesser.get(f"/s/{locked_token}")
    for attempt in range(5):
        guesser.post("/s/", {"answer": f"000{attempt}"})
    _lose_a_patient_invitation(study, front_desk)
    assert mail.outbox == []
    now = timezone.now()

    too_soon = _requeue(django_capture_on_commit_callbacks, now=now)
    later = _requeue(django_capture_on_commit_callbacks, now=now + LATER)
    again = _requeue(django_capture_on_commit_callbacks, now=now + 2 * LATER)

    assert (too_soon, later, again) == (0, 4, 0)
    recipients = sorted(address for message in mail.outbox for address in message.to)
    assert recipients == sorted(
        ["doctor@example.org", radiologist.email, radiologist.email, "jane@example.org"]
    )
    assert any("locked" in message.subject for message in mail.outbox)


def test_a_withdrawn_share_or_one_past_the_window_is_not_emailed(
    study,
    radiologist,
    django_capture_on_commit_callbacks,
):
    share, _ = make_share(study, radiologist, recipient_email="doctor@example.org")
    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())
    make_share(
        study,
        radiologist,
        recipient_email="late@example.org",
        expires_at=timezone.now() + dt.timedelta(days=30),
    )

    withdrawn = _requeue(django_capture_on_commit_callbacks, now=timezone.now() + LATER)
    make_share(
        study,
        radiologist,
        recipient_email="stale@example.org",
        expires_at=timezone.now() + dt.timedelta(days=30),
    )
    past_window = _requeue(
        django_capture_on_commit_callbacks, now=timezone.now() + dt.timedelta(days=8)
    )

    assert withdrawn == 1  # the second share only
    assert past_window == 0
    assert [message.to for message in mail.outbox] == [["late@example.org"]]
    # No email will carry their tokens: none is kept, sent or not.
    assert (
        not ShareLink.objects.for_tenant(study.tenant)
        .filter(invitation_token_wrapped__isnull=False)
        .exists()
    )


def test_a_share_withdrawn_while_its_email_waited_sends_nothing(study, radiologist):
    from sharing.tasks import share_invitation_send

    share, _ = make_share(study, radiologist, recipient_email="doctor@example.org")
    share_revoke(share=share, actor=TEST_ACTOR, now=timezone.now())

    sent = share_invitation_send(share_id=str(share.pk))  # the message queued before

    share.refresh_from_db()
    assert sent is False
    assert mail.outbox == []
    assert share.invitation_token_wrapped is None


def test_tokens_of_emails_that_will_not_go_are_forgotten_and_the_others_kept(
    study, radiologist, django_capture_on_commit_callbacks
):
    links = ShareLink.objects.for_tenant(study.tenant)
    withdrawn, _ = make_share(study, radiologist, recipient_email="a@example.org")
    make_share(
        study,
        radiologist,
        recipient_email="b@example.org",
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )
    waiting, _ = make_share(study, radiologist, recipient_email="c@example.org")
    claimed, _ = make_share(study, radiologist, recipient_email="d@example.org")
    links.filter(pk=withdrawn.pk).update(revoked_at=timezone.now())
    job_at = timezone.now() + dt.timedelta(hours=2)
    # A task at work: it claimed its email and reads the token next.
    links.filter(pk=claimed.pk).update(invitation_sent_at=job_at - dt.timedelta(minutes=1))
    # The broker was down: none of the four emails was queued.

    with django_capture_on_commit_callbacks(execute=False):
        notices_unsent_requeue(now=job_at)

    kept = set(links.filter(invitation_token_wrapped__isnull=False).values_list("pk", flat=True))
    assert kept == {waiting.pk, claimed.pk}


def test_a_suspended_clinic_emails_nothing(
    study, radiologist, front_desk, django_capture_on_commit_callbacks
):
    make_share(study, radiologist, recipient_email="doctor@example.org")
    _lose_a_patient_invitation(study, front_desk)
    study.tenant.status = Tenant.Status.SUSPENDED
    study.tenant.save(update_fields=["status"])

    queued = _requeue(django_capture_on_commit_callbacks, now=timezone.now() + LATER)

    assert queued == 0
    assert mail.outbox == []


def test_the_periodic_job_is_scheduled_and_runs(settings, db):
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    assert "sharing.tasks.notices_unsent_requeue" in scheduled
    assert notices_unsent_requeue_task() == 0
