"""Storing many files in one transaction (STOW-RS batches): same outcomes, all or nothing."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import pydicom
import pytest
from django.db import connection

from audit.actors import Actor
from audit.models import Action, AuditChain, AuditEvent
from audit.verify import chain_verify
from imaging import storage as storage_module
from imaging.ingest import IngestOutcome, ingest_many
from imaging.models import Instance, Patient, Series, Study
from imaging.storage import PrivateFileSystemStorage, object_keys, object_write_many, storage_for
from tests.helpers import make_clinic, require_postgresql
from tests.imaging_tests.helpers import ingest, sample_bytes, second_write_fails, synthetic_ct

ACTOR = Actor.system("test")


def _items(files: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f"{index}.dcm", data) for index, data in enumerate(files)]


def _sop(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


@pytest.mark.django_db
def test_a_render_that_crashes_in_a_batch_fails_alone(
    clinic, monkeypatch, django_capture_on_commit_callbacks
):
    from imaging import tasks

    real, calls = tasks.thumbnail_png, []

    def first_crashes(data: bytes) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the decoder crashed")
        return real(data)

    monkeypatch.setattr(tasks, "thumbnail_png", first_crashes)
    files = synthetic_ct(slices=1, patient_id="PID-A") + synthetic_ct(slices=1, patient_id="PID-B")

    with django_capture_on_commit_callbacks(execute=True):
        ingest_many(tenant=clinic, actor=ACTOR, items=_items(files))

    statuses = Series.objects.for_tenant(clinic).values_list("thumbnail_status", flat=True)
    assert sorted(statuses) == [Series.ThumbnailStatus.PENDING, Series.ThumbnailStatus.READY]


@pytest.mark.django_db
def test_a_batch_of_two_studies_is_stored_with_counts_and_one_event_per_instance(
    clinic, django_capture_on_commit_callbacks
):
    first = synthetic_ct(slices=3, patient_id="PID-A", patient_name="A^One")
    second = synthetic_ct(slices=2, patient_id="PID-B", patient_name="B^Two")

    from celery.signals import task_prerun

    tasks_run: list[str] = []

    def record(sender, **kwargs):
        tasks_run.append(sender.name)

    task_prerun.connect(record, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            results = ingest_many(tenant=clinic, actor=ACTOR, items=_items(second + first))
    finally:
        task_prerun.disconnect(record)

    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 5
    assert [r.sop_instance_uid for r in results] == [_sop(f) for f in second + first]
    studies = Study.objects.for_tenant(clinic).order_by("num_instances")
    assert [(s.num_instances, s.num_series, s.modalities) for s in studies] == [
        (2, 1, "CT"),
        (3, 1, "CT"),
    ]
    assert Patient.objects.for_tenant(clinic).count() == 2
    assert sorted(Series.objects.for_tenant(clinic).values_list("num_instances", flat=True)) == [
        2,
        3,
    ]
    stored = AuditEvent.objects.for_tenant(clinic).filter(action=Action.INSTANCE_STORED)
    assert sorted(stored.values_list("target_id", flat=True)) == sorted(
        r.instance_id for r in results
    )
    assert chain_verify(chain=AuditChain.objects.get(tenant=clinic)).intact
    # One task message for the batch's new series; it sends one render per series.
    assert tasks_run == ["imaging.tasks.series_thumbnails"] + ["imaging.tasks.series_thumbnail"] * 2
    thumbnails = Series.objects.for_tenant(clinic).values_list("thumbnail_status", flat=True)
    assert list(thumbnails) == [Series.ThumbnailStatus.READY] * 2
    assert len(object_keys(storage_for(clinic), str(clinic.pk))) == 5 + 2


@pytest.mark.django_db
def test_a_batch_with_duplicates_and_conflicts_gets_each_files_own_outcome(clinic):
    series = synthetic_ct(slices=3)
    ingest(clinic, series[0])
    altered = synthetic_ct(slices=1)[0]
    conflicting = pydicom.dcmread(io.BytesIO(altered))
    conflicting.SOPInstanceUID = conflicting.file_meta.MediaStorageSOPInstanceUID = _sop(series[1])
    buffer = io.BytesIO()
    conflicting.save_as(buffer, enforce_file_format=True)
    items = _items([series[0], b"not dicom at all" * 20, series[2], series[1], buffer.getvalue()])

    results = ingest_many(tenant=clinic, actor=ACTOR, items=items)

    assert [(r.outcome, r.code) for r in results] == [
        (IngestOutcome.DUPLICATE, ""),
        (IngestOutcome.REJECTED, "not_part10"),
        (IngestOutcome.STORED, ""),
        (IngestOutcome.STORED, ""),
        (IngestOutcome.REJECTED, "conflict"),
    ]
    assert Instance.objects.for_tenant(clinic).count() == 3


@pytest.mark.django_db
def test_files_of_another_study_are_refused_when_a_study_is_addressed(clinic):
    wanted = synthetic_ct(slices=2)
    other = synthetic_ct(slices=1)
    study_uid = pydicom.dcmread(io.BytesIO(wanted[0]), stop_before_pixels=True).StudyInstanceUID

    results = ingest_many(
        tenant=clinic, actor=ACTOR, items=_items(wanted + other), study_uid=study_uid
    )

    assert [r.code for r in results] == ["", "", "study_mismatch"]
    assert set(Study.objects.for_tenant(clinic).values_list("study_uid", flat=True)) == {study_uid}


@pytest.mark.django_db
def test_a_failure_mid_batch_leaves_no_rows_or_objects_and_fails_each_file(clinic, monkeypatch):
    files = synthetic_ct(slices=4)
    real_write = PrivateFileSystemStorage.write_file
    calls, lock = [], threading.Lock()

    def failing_write(storage, name, content):
        with lock:  # the batch's objects are written on several threads at once
            calls.append(name)
            fail = len(calls) == 3
        if fail:
            raise OSError("disk full")
        return real_write(storage, name, content)

    monkeypatch.setattr(PrivateFileSystemStorage, "write_file", failing_write)
    events_before = AuditEvent.objects.for_tenant(clinic).count()

    results = ingest_many(tenant=clinic, actor=ACTOR, items=_items(files))

    assert [(r.code, r.sop_instance_uid) for r in results] == [
        ("store_failed", _sop(data)) for data in files
    ]
    assert not Instance.objects.for_tenant(clinic).exists()
    assert not Study.objects.for_tenant(clinic).exists()
    assert object_keys(storage_for(clinic), str(clinic.pk)) == []
    assert len(calls) == 4  # the other writes finished before their objects were removed
    # No event of what was rolled back; each file audited as sent and not kept.
    events = AuditEvent.objects.for_tenant(clinic).order_by("seq")[events_before:]
    assert [(e.action, e.detail) for e in events] == [
        (Action.INSTANCE_REJECTED, {"code": "store_failed", "error": "OSError"})
    ] * 4


@pytest.mark.django_db
def test_stow_stores_a_multi_part_request_in_batches(clinic, settings):
    from tests.imaging_tests.dicomweb_support import dicomweb, token_for

    settings.STOW_BATCH_INSTANCES = 3
    files = [*synthetic_ct(slices=7), sample_bytes("CT_small.dcm")]
    client = dicomweb(token_for(clinic, "dicomweb:read", "dicomweb:write"))

    response = client.store_instances([pydicom.dcmread(io.BytesIO(f)) for f in files])

    assert len(response.ReferencedSOPSequence) == 8
    assert "FailedSOPSequence" not in response
    assert Instance.objects.for_tenant(clinic).count() == 8


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_batches_on_the_same_studies_store_each_instance_once():
    require_postgresql()
    clinic = make_clinic("busy")
    first = synthetic_ct(slices=6, patient_id="PID-1")
    second = synthetic_ct(slices=6, patient_id="PID-2")
    # Each writer sends both studies, in opposite orders and with half the files shared.
    batches = [first + second[:3], second + first[:3]]
    outcomes: list[list[IngestOutcome]] = []
    errors: list[BaseException] = []

    def writer(files: list[bytes]) -> None:
        try:
            results = ingest_many(tenant=clinic, actor=ACTOR, items=_items(files))
            outcomes.append([r.outcome for r in results])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Instance.objects.for_tenant(clinic).count() == 12
    assert sum(o.count(IngestOutcome.STORED) for o in outcomes) == 12
    assert sum(o.count(IngestOutcome.DUPLICATE) for o in outcomes) == 6
    assert chain_verify(chain=AuditChain.objects.get(tenant=clinic)).intact


@pytest.mark.django_db
def test_object_write_many_leaves_whole_private_files_and_syncs_each_directory_once(
    clinic, monkeypatch
):
    storage = storage_for(clinic)
    synced = []
    real_sync = storage_module.sync_directory
    monkeypatch.setattr(
        storage_module, "sync_directory", lambda path: (synced.append(path), real_sync(path))
    )
    objects = [(f"{clinic.pk}/batch-{i}", iter([b"x" * 1000, bytes([i])])) for i in range(8)]

    object_write_many(storage, objects)

    directory = Path(storage.path(str(clinic.pk)))
    assert sorted(p.name for p in directory.iterdir()) == [f"batch-{i}" for i in range(8)]
    assert all(
        (directory / f"batch-{i}").read_bytes() == b"x" * 1000 + bytes([i]) for i in range(8)
    )
    assert {oct(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {"0o600"}
    assert synced.count(directory) == 1  # the eight renames, made durable at once
    assert directory.parent in synced  # the clinic's new folder, in its parent


def test_object_writes_still_run_in_a_forked_child(tmp_path):
    # A prefork worker forked after its parent wrote objects must not wait on the
    # parent's threads, which do not exist in the child.
    storage = PrivateFileSystemStorage(str(tmp_path))
    object_write_many(storage, [("parent/one", iter([b"p"]))])

    pid = os.fork()
    if pid == 0:  # the child
        try:
            object_write_many(storage, [("child/one", iter([b"c"])), ("child/two", iter([b"c"]))])
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.05)
    finished = (tmp_path / "child" / "two").exists()
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    assert finished
    assert (tmp_path / "child" / "one").read_bytes() == b"c"


@pytest.mark.django_db
def test_a_file_failing_in_a_batch_stored_one_at_a_time_fails_alone(clinic, monkeypatch, caplog):
    files = synthetic_ct(slices=4)
    ingest(clinic, files[0])  # a duplicate in the batch sends it down the one-at-a-time path
    second_write_fails(monkeypatch)

    results = ingest_many(tenant=clinic, actor=ACTOR, items=_items(files))

    assert [r.outcome for r in results] == [
        IngestOutcome.DUPLICATE,
        IngestOutcome.STORED,
        IngestOutcome.REJECTED,
        IngestOutcome.STORED,
    ]
    assert results[2].code == "store_failed"
    assert results[2].sop_instance_uid == _sop(files[2])
    stored = set(Instance.objects.for_tenant(clinic).values_list("sop_instance_uid", flat=True))
    assert stored == {_sop(files[0]), _sop(files[1]), _sop(files[3])}
    assert len(object_keys(storage_for(clinic), str(clinic.pk))) == 3
    assert "OSError" in caplog.text
    refused = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_REJECTED)
    assert refused.detail == {"code": "store_failed", "error": "OSError"}
