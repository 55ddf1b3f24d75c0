"""A thumbnail whose render keeps killing its worker is given up on, not retried forever."""

from __future__ import annotations

import pytest
from django.utils import timezone

from imaging import tasks
from imaging.models import Series
from imaging.services import series_thumbnails_rebuild, thumbnails_pending_requeue
from imaging.tasks import series_thumbnail
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import ingest, synthetic_ct


class WorkerDied(BaseException):
    """Stands in for the process ending mid-render (out of memory, a decoder crash):
    nothing after the render runs, and no handler of Exception sees it."""


def _dies(*args, **kwargs):
    raise WorkerDied


@pytest.fixture
def series(clinic):
    ingest(clinic, synthetic_ct(slices=1)[0])
    return Series.objects.for_tenant(clinic).get()


def _run(series: Series) -> str:
    return series_thumbnail(tenant_id=str(series.tenant_id), series_id=str(series.pk))


@pytest.mark.django_db
def test_a_render_that_keeps_killing_its_worker_is_marked_failed(
    clinic, series, data_dir, monkeypatch, settings
):
    settings.THUMBNAIL_MAX_ATTEMPTS = 3
    monkeypatch.setattr(tasks, "thumbnail_png", _dies)

    for _ in range(3):  # the broker hands the message back after each death
        with pytest.raises(WorkerDied):
            _run(series)
    outcome = _run(series)

    series.refresh_from_db()
    assert outcome == "failed"
    assert series.thumbnail_status == Series.ThumbnailStatus.FAILED
    assert "cut off too many times" in series.thumbnail_error
    later = timezone.now() + timezone.timedelta(hours=1)
    assert thumbnails_pending_requeue(tenant=clinic, now=later) == 0


@pytest.mark.django_db
def test_renders_that_fail_without_killing_the_worker_are_not_counted(
    clinic, series, data_dir, monkeypatch, settings
):
    settings.THUMBNAIL_MAX_ATTEMPTS = 2

    def storage_down(*args, **kwargs):
        raise ConnectionError("storage unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(tasks, "instance_bytes", storage_down)
        for _ in range(5):  # retries, then the recovery job, while storage is down
            with pytest.raises(ConnectionError):
                tasks._series_thumbnail(tenant_id=str(series.tenant_id), series_id=str(series.pk))

    assert _run(series) == "ready"


@pytest.mark.django_db
def test_a_render_that_finishes_starts_the_count_again(clinic, series, data_dir, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "thumbnail_png", _dies)
        with pytest.raises(WorkerDied):
            _run(series)

    outcome = _run(series)

    series.refresh_from_db()
    assert outcome == "ready"
    assert series.thumbnail_attempts == 0


@pytest.mark.django_db
def test_a_rebuild_tries_a_series_given_up_on_again(
    clinic, series, data_dir, monkeypatch, settings, django_capture_on_commit_callbacks
):
    settings.THUMBNAIL_MAX_ATTEMPTS = 1
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "thumbnail_png", _dies)
        with pytest.raises(WorkerDied):
            _run(series)
    assert _run(series) == "failed"

    series_thumbnails_rebuild(tenant=clinic, actor=TEST_ACTOR, failed_only=True)

    series.refresh_from_db()
    assert series.thumbnail_status == Series.ThumbnailStatus.READY
