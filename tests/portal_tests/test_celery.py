"""Background work: the project's task decorator, and a real worker on Redis."""

from __future__ import annotations

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from audit.models import Action, AuditEvent, Outcome
from audit.tasks import audit_chains_verify
from portal.celery import app
from portal.tasks import ping
from tests.helpers import make_clinic, require_service, tcp_reachable


def _require_redis() -> None:
    url = settings.REDIS_URL
    require_service(
        "Redis",
        bool(url) and tcp_reachable(url, 6379),
        "set REDIS_URL=redis://127.0.0.1:6379/0 and start redis-server",
    )


@pytest.fixture
def redis_worker():
    _require_redis()
    app.conf.task_always_eager = False
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def test_project_tasks_are_late_acknowledged_with_bounded_retries():
    for task in (ping, audit_chains_verify):
        assert task.acks_late is True
        assert task.reject_on_worker_lost is True
        assert task.max_retries is not None


def test_messages_are_json_only():
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]


def test_beat_schedules_audit_verification():
    schedule = app.conf.beat_schedule
    assert schedule["audit-chains-verify"]["task"] == audit_chains_verify.name


def test_real_worker_answers_through_redis(redis_worker):
    assert ping.delay().get(timeout=20) == "pong"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_worker_verifies_audit_chains_and_records_the_result(redis_worker):
    clinic = make_clinic("east")

    result = audit_chains_verify.delay().get(timeout=30)

    assert result["broken"] == 0
    assert result["chains"] >= 2
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.AUDIT_VERIFIED).get()
    assert event.outcome == Outcome.SUCCESS
    assert event.actor_type == "system"
