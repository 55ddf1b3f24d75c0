"""`manage.py rebuild_thumbnails`: thumbnails rendered again after a change to rendering."""

from __future__ import annotations

import getpass
import io

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from audit.models import Action, AuditEvent
from imaging import tasks
from imaging.models import Series
from imaging.render import RenderError
from imaging.services import thumbnail_bytes
from imaging.storage import storage_for
from imaging.tasks import series_thumbnail
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import ingest, synthetic_ct, synthetic_palette


def _grey_png(*args, **kwargs) -> bytes:
    # What palette images got before they were rendered in colour.
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _is_colour(png: bytes) -> bool:
    pixels = _pixels(png)
    return not np.array_equal(pixels[..., 0], pixels[..., 1])


def _series_with_thumbnail(tenant, data: bytes) -> Series:
    ingest(tenant, data)
    series = Series.objects.for_tenant(tenant).order_by("-created_at").first()
    series_thumbnail(tenant_id=str(tenant.pk), series_id=str(series.pk))
    series.refresh_from_db()
    return series


def _rebuild(*args: str, **kwargs) -> str:
    out = io.StringIO()
    call_command("rebuild_thumbnails", *args, stdout=out, **kwargs)
    return out.getvalue()


@pytest.mark.django_db
def test_a_thumbnail_made_by_older_rendering_is_rendered_again(
    clinic, data_dir, monkeypatch, django_capture_on_commit_callbacks
):
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "thumbnail_png", _grey_png)
        series = _series_with_thumbnail(clinic, synthetic_palette(frames=1))
    old_key = series.thumbnail_key
    assert not _is_colour(thumbnail_bytes(series=series, actor=TEST_ACTOR))

    with django_capture_on_commit_callbacks(execute=True):
        output = _rebuild("--tenant", clinic.slug)

    series.refresh_from_db()
    assert "1 series queued" in output
    assert series.thumbnail_status == Series.ThumbnailStatus.READY
    assert series.thumbnail_key not in ("", old_key)
    assert _is_colour(thumbnail_bytes(series=series, actor=TEST_ACTOR))
    assert not storage_for(clinic).exists(old_key)  # the replaced object is gone


@pytest.mark.django_db
def test_another_clinics_series_are_neither_rebuilt_nor_named(
    clinic, other_clinic, data_dir, django_capture_on_commit_callbacks
):
    ours = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    theirs = _series_with_thumbnail(other_clinic, synthetic_ct(slices=1)[0])

    with pytest.raises(CommandError, match=f"Not series of this clinic: {theirs.series_uid}\\."):
        _rebuild("--tenant", clinic.slug, "--series", ours.series_uid, theirs.series_uid)
    with django_capture_on_commit_callbacks(execute=True):
        _rebuild("--tenant", clinic.slug)

    theirs_after = Series.objects.for_tenant(other_clinic).get(pk=theirs.pk)
    ours_after = Series.objects.for_tenant(clinic).get(pk=ours.pk)
    assert theirs_after.thumbnail_key == theirs.thumbnail_key
    assert ours_after.thumbnail_key != ours.thumbnail_key
    assert (
        not AuditEvent.objects.for_tenant(other_clinic)
        .filter(action=Action.THUMBNAILS_REBUILT)
        .exists()
    )


@pytest.mark.django_db
def test_failed_only_leaves_the_good_thumbnails_alone(
    clinic, data_dir, monkeypatch, django_capture_on_commit_callbacks
):
    good = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "thumbnail_png", _raises_render_error)
        failed = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    assert failed.thumbnail_status == Series.ThumbnailStatus.FAILED

    with django_capture_on_commit_callbacks(execute=True):
        output = _rebuild("--tenant", clinic.slug, "--failed")

    good_after = Series.objects.for_tenant(clinic).get(pk=good.pk)
    failed_after = Series.objects.for_tenant(clinic).get(pk=failed.pk)
    assert "1 series queued" in output
    assert good_after.thumbnail_key == good.thumbnail_key
    assert failed_after.thumbnail_status == Series.ThumbnailStatus.READY
    assert failed_after.thumbnail_key and failed_after.thumbnail_error == ""


def _raises_render_error(*args, **kwargs) -> bytes:
    raise RenderError("Not renderable.")


@pytest.mark.django_db
def test_a_rebuild_that_cannot_render_keeps_the_thumbnail_there_is(
    clinic, data_dir, monkeypatch, django_capture_on_commit_callbacks
):
    series = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    monkeypatch.setattr(tasks, "thumbnail_png", _raises_render_error)

    with django_capture_on_commit_callbacks(execute=True):
        _rebuild("--tenant", clinic.slug)

    after = Series.objects.for_tenant(clinic).get(pk=series.pk)
    assert (after.thumbnail_key, after.thumbnail_status) == (
        series.thumbnail_key,
        Series.ThumbnailStatus.READY,
    )
    assert thumbnail_bytes(series=after, actor=TEST_ACTOR)[:4] == b"\x89PNG"


@pytest.mark.django_db
def test_the_request_is_audited_with_its_count(clinic, data_dir):
    _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])

    _rebuild("--tenant", clinic.slug)

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.THUMBNAILS_REBUILT)
    assert event.detail == {"series": 2, "queued": 2, "failed_only": False}
    assert event.outcome == "success"
    assert event.actor_id == f"cli.rebuild_thumbnails@{getpass.getuser()}"


@pytest.mark.django_db
def test_an_unknown_clinic_is_a_clear_error(clinic):
    with pytest.raises(CommandError, match="No clinic with slug 'nowhere'"):
        _rebuild("--tenant", "nowhere")


@pytest.mark.django_db
def test_a_reader_holding_the_replaced_key_gets_the_new_thumbnail_not_an_alarm(
    clinic, data_dir, django_capture_on_commit_callbacks
):
    stale = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])  # read before the swap

    with django_capture_on_commit_callbacks(execute=True):
        _rebuild("--tenant", clinic.slug)

    assert not storage_for(clinic).exists(stale.thumbnail_key)
    assert thumbnail_bytes(series=stale, actor=TEST_ACTOR)[:4] == b"\x89PNG"
    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.INTEGRITY_FAILED).exists()


@pytest.mark.django_db
def test_one_series_that_cannot_be_read_does_not_stop_the_others(
    clinic, data_dir, django_capture_on_commit_callbacks
):
    from imaging.models import Instance
    from imaging.storage import object_delete

    broken = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    fine = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    lost = Instance.objects.for_tenant(clinic).get(series=broken)
    object_delete(storage_for(clinic), lost.storage_key)

    with django_capture_on_commit_callbacks(execute=True):
        _rebuild("--tenant", clinic.slug)

    broken_after = Series.objects.for_tenant(clinic).get(pk=broken.pk)
    fine_after = Series.objects.for_tenant(clinic).get(pk=fine.pk)
    assert fine_after.thumbnail_key != fine.thumbnail_key
    assert broken_after.thumbnail_key == broken.thumbnail_key  # kept
    assert broken_after.thumbnail_error.startswith("Not rendered again")
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.INTEGRITY_FAILED).exists()


@pytest.mark.django_db
def test_two_rebuilds_at_once_leave_one_thumbnail_object(clinic, data_dir, monkeypatch):
    from imaging.models import Instance
    from imaging.storage import object_keys

    series = _series_with_thumbnail(clinic, synthetic_ct(slices=1)[0])
    real = tasks.thumbnail_png
    raced: list[bool] = []

    def racing(data: bytes) -> bytes:
        if not raced:  # another rebuild of the same series finishes first
            raced.append(True)
            series_thumbnail(tenant_id=str(clinic.pk), series_id=str(series.pk), replace=True)
        return real(data)

    monkeypatch.setattr(tasks, "thumbnail_png", racing)

    outcome = series_thumbnail(tenant_id=str(clinic.pk), series_id=str(series.pk), replace=True)

    series.refresh_from_db()
    instances = set(Instance.objects.for_tenant(clinic).values_list("storage_key", flat=True))
    thumbnails = set(object_keys(storage_for(clinic), str(clinic.pk))) - instances
    assert outcome == "skipped"
    assert thumbnails == {series.thumbnail_key}
