"""The orphan sweep on the local filesystem: what a crash left behind goes, nothing else."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from django.utils import timezone

from imaging.models import Instance
from imaging.services import orphan_sweep
from imaging.storage import object_write, storage_for
from tests.imaging_tests.helpers import ingest, synthetic_ct


def _orphan_and_half_written(storage, clinic) -> str:
    """An object no row names, and beside it a write cut short; the latter's path."""
    object_write(storage, f"{clinic.pk}/orphan", [b"left by a crash after the write"])
    directory = os.path.dirname(storage.path(f"{clinic.pk}/orphan"))
    half = os.path.join(directory, ".0a1b2c.5d6e7f80.part")
    with open(half, "wb") as handle:
        handle.write(b"left by a crash during the write")
    return half


@pytest.mark.django_db
def test_the_sweep_removes_unreferenced_objects_and_half_written_files(clinic, data_dir):
    result = ingest(clinic, synthetic_ct(slices=1)[0])
    storage = storage_for(clinic)
    half = _orphan_and_half_written(storage, clinic)
    kept = Instance.objects.for_tenant(clinic).get(pk=result.instance_id).storage_key

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() + dt.timedelta(days=1))

    assert removed == 2
    assert not os.path.exists(half)
    assert not storage.exists(f"{clinic.pk}/orphan")
    assert storage.exists(kept)


@pytest.mark.django_db
def test_the_sweep_leaves_a_write_still_under_way(clinic, data_dir):
    storage = storage_for(clinic)
    half = _orphan_and_half_written(storage, clinic)

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() - dt.timedelta(hours=1))

    assert removed == 0 and os.path.exists(half)
