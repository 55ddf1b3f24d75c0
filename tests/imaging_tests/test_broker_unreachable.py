"""A broker that cannot be reached never fails or undoes a committed store.

Follow-up work (thumbnails) is queued once the rows commit. A broker fault there used to
reach the ingest's clean-up: STOW-RS answered 409 for instances it had committed, and
removed their objects, so the rows named objects that no longer existed.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re

import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from audit.models import Action, AuditEvent
from imaging import ingest as ingest_module
from imaging.models import Instance, Series
from imaging.services import thumbnails_pending_requeue
from imaging.storage import storage_for
from imaging.tasks import thumbnails_pending_requeue_all
from portal.celery import app
from tests.helpers import celery_broker
from tests.imaging_tests.dicomweb_support import BASE, http, instance_url, token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

UNREACHABLE = "redis://127.0.0.1:1/0"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def broker_down():
    app.conf.task_always_eager = False
    try:
        with celery_broker(UNREACHABLE):
            yield
    finally:
        app.conf.task_always_eager = True


def _multipart(files: list[bytes]) -> bytes:
    body = b""
    for data in files:
        body += b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
    return body + b"--b0undary--\r\n"


def _retrieved(session, data: bytes) -> bytes:
    response = session.get(
        instance_url(pydicom.dcmread(io.BytesIO(data))), headers={"Accept": AS_STORED}
    )
    assert response.status_code == 200, response.content[:200]
    boundary = re.search(r"boundary=([^;]+)", response.headers["Content-Type"])[1]
    return response.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1][:-2]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("slices", [1, 3], ids=["one file", "a batch"])
def test_stow_with_the_broker_down_is_stored_and_acknowledged(slices, clinic, broker_down, caplog):
    files = synthetic_ct(slices=slices, size=32)
    session = http(token_for(clinic, "dicomweb:read", "dicomweb:write"))

    with caplog.at_level(logging.ERROR, logger="portal.tasks"):
        stored = session.post(
            f"{BASE}/studies", data=_multipart(files), headers={"Content-Type": STOW_TYPE}
        )

    assert stored.status_code == 200, stored.content[:300]
    assert "00081198" not in stored.json()  # no failed SOP sequence
    assert Instance.objects.for_tenant(clinic).count() == slices
    assert [_retrieved(session, data) for data in files] == files
    assert Series.objects.for_tenant(clinic).get().thumbnail_status == "pending"
    assert "could not queue imaging.tasks.series_thumbnail" in caplog.text


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("slices", [1, 3], ids=["one file", "a batch"])
def test_an_error_after_the_commit_keeps_the_objects_and_the_answer(slices, clinic, monkeypatch):
    # Any on-commit callback that raises, not only a broker fault.
    def raising_enqueue(**kwargs):
        def fail():
            raise RuntimeError("after commit")

        transaction.on_commit(fail)

    monkeypatch.setattr(ingest_module, "_enqueue_thumbnails", raising_enqueue)
    files = synthetic_ct(slices=slices, size=32)
    session = http(token_for(clinic, "dicomweb:read", "dicomweb:write"))

    stored = session.post(
        f"{BASE}/studies", data=_multipart(files), headers={"Content-Type": STOW_TYPE}
    )

    assert stored.status_code == 200
    storage = storage_for(clinic)
    keys = list(Instance.objects.for_tenant(clinic).values_list("storage_key", flat=True))
    assert len(keys) == slices
    assert all(storage.exists(key) for key in keys)
    assert [_retrieved(session, data) for data in files] == files


@pytest.mark.django_db
def test_a_thumbnail_whose_message_was_lost_is_queued_again_later(
    clinic, other_clinic, django_capture_on_commit_callbacks
):
    ingest(clinic, synthetic_ct(slices=1, size=32)[0])
    ingest(other_clinic, synthetic_ct(slices=1, size=32)[0])
    Series.objects.for_tenant(clinic).update(thumbnail_status="pending", thumbnail_key="")
    Series.objects.for_tenant(other_clinic).update(thumbnail_status="pending", thumbnail_key="")
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        too_soon = thumbnails_pending_requeue(tenant=clinic, now=now)
        past_window = thumbnails_pending_requeue(tenant=clinic, now=now + dt.timedelta(days=8))
    with django_capture_on_commit_callbacks(execute=True):
        later = thumbnails_pending_requeue(tenant=clinic, now=now + dt.timedelta(minutes=31))

    assert (too_soon, past_window, later) == (0, 0, 1)
    assert Series.objects.for_tenant(clinic).get().thumbnail_status == "ready"
    assert Series.objects.for_tenant(other_clinic).get().thumbnail_status == "pending"


@pytest.mark.django_db
def test_the_periodic_job_covers_every_clinic_and_only_old_pending_thumbnails(
    clinic, other_clinic, settings, django_capture_on_commit_callbacks
):
    for tenant in (clinic, other_clinic):
        ingest(tenant, synthetic_ct(slices=1, size=32)[0])
        ingest(tenant, synthetic_ct(slices=1, size=32)[0])  # a second, recent series
    long_ago = timezone.now() - dt.timedelta(hours=2)
    Series.objects.unscoped(reason="test").update(thumbnail_status="pending", thumbnail_key="")
    for tenant in (clinic, other_clinic):
        oldest = Series.objects.for_tenant(tenant).order_by("created_at").first()
        Series.objects.for_tenant(tenant).filter(pk=oldest.pk).update(created_at=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        queued = thumbnails_pending_requeue_all()

    assert queued == 2
    statuses = sorted(
        Series.objects.unscoped(reason="test").values_list("thumbnail_status", flat=True)
    )
    assert statuses == ["pending", "pending", "ready", "ready"]
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "imaging.tasks.thumbnails_pending_requeue_all" in scheduled


@pytest.mark.django_db
def test_rebuild_with_the_broker_down_says_so_and_queues_nothing(clinic, broker_down):
    ingest(clinic, synthetic_ct(slices=1, size=32)[0])

    with pytest.raises(CommandError, match=r"task queue cannot be reached .*; nothing was queued"):
        call_command("rebuild_thumbnails", "--tenant", clinic.slug, stdout=io.StringIO())

    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.THUMBNAILS_REBUILT)


@pytest.mark.django_db
def test_rebuild_that_the_broker_drops_after_the_check_is_an_error(clinic, monkeypatch):
    from imaging.management.commands import rebuild_thumbnails

    ingest(clinic, synthetic_ct(slices=1, size=32)[0])
    monkeypatch.setattr(rebuild_thumbnails, "broker_check", lambda: None)
    app.conf.task_always_eager = False
    try:
        with celery_broker(UNREACHABLE), pytest.raises(CommandError, match="took 0 of 1 series"):
            call_command("rebuild_thumbnails", "--tenant", clinic.slug, stdout=io.StringIO())
    finally:
        app.conf.task_always_eager = True

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.THUMBNAILS_REBUILT)
    assert event.outcome == "failure"
    assert event.detail == {"series": 1, "queued": 0, "failed_only": False}
