"""Break-glass notices and staff invitations whose task message was lost go later, once.

Each arrangement commits its change without running the on-commit send, as when the
broker could not be reached at the commit.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.core import mail
from django.utils import timezone

from audit.actors import Actor, Target
from tenants.breakglass import break_glass_open
from tenants.invitations import staff_invite
from tenants.models import Tenant
from tenants.services import notices_unsent_requeue
from tenants.tasks import notices_unsent_requeue as notices_unsent_requeue_task
from tests.helpers import TEST_ACTOR, membership_of

LATER = dt.timedelta(minutes=31)


def _requeue(capture, *, now: dt.datetime) -> int:
    with capture(execute=True):
        return notices_unsent_requeue(now=now)


def _lose_a_notice_and_an_invitation(clinic, radiologist, tenant_admin, *, now) -> None:
    """Commit both without running their on-commit sends."""
    break_glass_open(
        membership=membership_of(radiologist, clinic),
        target=Target("imaging.study", str(uuid.UUID(int=7))),
        reason="Patient unconscious in ER, prior CT needed for comparison",
        actor=Actor.for_user(radiologist),
        now=now,
    )
    staff_invite(
        tenant=clinic,
        email="new.colleague@north.example",
        roles=["radiologist"],
        invited_by=tenant_admin,
        actor=TEST_ACTOR,
        now=now,
    )


@pytest.mark.django_db
def test_a_lost_break_glass_notice_and_invitation_go_later_and_only_once(
    clinic, radiologist, privacy_officer, tenant_admin, django_capture_on_commit_callbacks
):
    now = timezone.now()
    _lose_a_notice_and_an_invitation(clinic, radiologist, tenant_admin, now=now)
    assert mail.outbox == []

    too_soon = _requeue(django_capture_on_commit_callbacks, now=now)
    later = _requeue(django_capture_on_commit_callbacks, now=now + LATER)
    again = _requeue(django_capture_on_commit_callbacks, now=now + 2 * LATER)

    assert (too_soon, later, again) == (0, 2, 0)
    assert sorted(message.to[0] for message in mail.outbox) == sorted(
        [privacy_officer.email, "new.colleague@north.example"]
    )


@pytest.mark.django_db
def test_nothing_past_the_window_or_of_a_suspended_clinic(
    clinic, radiologist, privacy_officer, tenant_admin, django_capture_on_commit_callbacks
):
    now = timezone.now()
    _lose_a_notice_and_an_invitation(clinic, radiologist, tenant_admin, now=now)

    past_window = _requeue(django_capture_on_commit_callbacks, now=now + dt.timedelta(days=8))
    clinic.status = Tenant.Status.SUSPENDED
    clinic.save(update_fields=["status"])
    suspended = _requeue(django_capture_on_commit_callbacks, now=now + LATER)

    assert past_window == 0
    assert suspended == 1  # the break-glass notice still goes; the invitation does not
    assert [message.to for message in mail.outbox] == [[privacy_officer.email]]


@pytest.mark.django_db
def test_the_periodic_job_is_scheduled_and_runs(settings):
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    assert "tenants.tasks.notices_unsent_requeue" in scheduled
    assert notices_unsent_requeue_task() == 0
