"""The orphan sweep on the local filesystem: what a crash left behind goes, nothing else."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from django.utils import timezone

from imaging.models import Instance
from imaging.services import orphan_sweep
from imaging.storage import object_key_new, object_write, storage_for
from tests.imaging_tests.helpers import ingest, synthetic_ct


def _orphan_and_half_written(storage, clinic) -> tuple[str, str]:
    """An object no row names, and beside it a write cut short: (its key, the latter's path)."""
    orphan = object_key_new(clinic)
    object_write(storage, orphan, [b"left by a crash after the write"])
    directory = os.path.dirname(storage.path(orphan))
    half = os.path.join(directory, f".{'0a1b' * 8}.5d6e7f80.part")
    with open(half, "wb") as handle:
        handle.write(b"left by a crash during the write")
    return orphan, half


@pytest.mark.django_db
def test_the_sweep_removes_unreferenced_objects_and_half_written_files(clinic, data_dir):
    result = ingest(clinic, synthetic_ct(slices=1)[0])
    storage = storage_for(clinic)
    orphan, half = _orphan_and_half_written(storage, clinic)
    kept = Instance.objects.for_tenant(clinic).get(pk=result.instance_id).storage_key

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() + dt.timedelta(days=1))

    assert removed == 2
    assert not os.path.exists(half)
    assert not storage.exists(orphan)
    assert storage.exists(kept)


@pytest.mark.django_db
def test_the_sweep_leaves_what_the_portal_did_not_name_under_the_clinics_prefix(clinic, data_dir):
    """An audit checkpoint, say, put in the objects' folder by a deployment."""
    storage = storage_for(clinic)
    foreign = [f"{clinic.pk}/41.json", f"{clinic.pk}/checkpoints/{'ab' * 16}", f"{clinic.pk}/x"]
    for key in foreign:
        object_write(storage, key, [b"not an object of the portal's"])

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() + dt.timedelta(days=1))

    assert removed == 0
    assert all(storage.exists(key) for key in foreign)


@pytest.mark.django_db
def test_an_object_that_cannot_be_removed_does_not_stop_the_sweep(
    clinic, data_dir, monkeypatch, caplog
):
    from imaging import services

    storage = storage_for(clinic)
    orphans = [object_key_new(clinic) for _ in range(3)]
    for key in orphans:
        object_write(storage, key, [b"left by a crash"])
    real_delete = services.object_delete
    refused = sorted(orphans)[0]

    def delete(storage, key):
        if key == refused:
            raise PermissionError(13, "Permission denied")
        real_delete(storage, key)

    monkeypatch.setattr(services, "object_delete", delete)

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() + dt.timedelta(days=1))

    assert removed == 2
    assert [key for key in orphans if storage.exists(key)] == [refused]
    assert "could not remove" in caplog.text


@pytest.mark.django_db
def test_the_sweep_leaves_a_write_still_under_way(clinic, data_dir):
    storage = storage_for(clinic)
    _, half = _orphan_and_half_written(storage, clinic)

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() - dt.timedelta(hours=1))

    assert removed == 0 and os.path.exists(half)
