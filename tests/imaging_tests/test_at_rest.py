"""No plaintext PHI outside the database; tampering is detected; hostile preambles neutralised."""

from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import pytest
from celery.signals import before_task_publish

from audit.models import Action, AuditEvent
from imaging.crypto import IntegrityError
from imaging.models import Instance
from imaging.services import instance_bytes
from portal.celery import app
from tests.helpers import celery_broker, require_service, tcp_reachable
from tests.imaging_tests.helpers import (
    INGEST_ACTOR,
    flip_a_stored_byte,
    ingest,
    sample_bytes,
    synthetic_ct,
)

NAME = "Zyxwvutsr^Qponmlk"
PATIENT_ID = "PHI-777-XYZ"


def _pixel_run() -> bytes:
    size = 64
    pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) + 1) % 4096
    return pixels.tobytes()[1000:1064]


def _needles() -> list[bytes]:
    return [NAME.encode(), NAME.split("^")[0].encode(), PATIENT_ID.encode(), _pixel_run()]


def _files_containing(root, needles):
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.name != "portal.sqlite3":
            content = path.read_bytes()
            hits += [f"{path.relative_to(root)}" for needle in needles if needle in content]
    return hits


# What an image or a DICOM file stored in clear would start with.
CLEAR_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"\x00\x00\x00\x0cjP", b"PK")


def _kept_temporary_files(monkeypatch, scratch) -> None:
    """Temporary files are anonymous (unlinked at once), so nothing could read them
    afterwards: keep each one, named, where it was asked for (else under `scratch`),
    and send every other temporary file and upload to `scratch` too."""
    import tempfile

    def kept(*args, dir=None, **kwargs):
        return tempfile.NamedTemporaryFile(dir=dir or scratch, delete=False)

    monkeypatch.setattr(tempfile, "TemporaryFile", kept)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))


def _looks_clear(content: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError

    if content.startswith(CLEAR_SIGNATURES) or content[128:132] == b"DICM":
        return True
    try:
        Image.open(io.BytesIO(content))
    except UnidentifiedImageError:
        return False
    return True


@pytest.mark.django_db
def test_no_plaintext_phi_on_disk_in_messages_or_logs_after_ingest(
    clinic,
    technologist,
    client_for,
    data_dir,
    settings,
    caplog,
    monkeypatch,
    tmp_path,
    django_capture_on_commit_callbacks,
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # force the encrypted spool
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(scratch)
    _kept_temporary_files(monkeypatch, scratch)
    caplog.set_level(logging.DEBUG)
    files = synthetic_ct(slices=3, size=64, patient_name=NAME, patient_id=PATIENT_ID)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(files):
            zf.writestr(f"{i}.dcm", data)
    published: list[str] = []

    def capture(body=None, headers=None, **kwargs):
        published.append(repr(body) + repr(headers))

    before_task_publish.connect(capture, weak=False)
    app.conf.task_always_eager = False
    try:
        with celery_broker("memory://"), django_capture_on_commit_callbacks(execute=True):
            response = client_for(technologist).post(
                "/t/north/upload/",
                {"files": [_named(archive.getvalue(), "study.zip"), _named(files[0], "again.dcm")]},
                HTTP_ACCEPT="application/json",
            )
    finally:
        app.conf.task_always_eager = True
        before_task_publish.disconnect(capture)
    from imaging.models import Series
    from imaging.tasks import series_thumbnail

    series = Series.objects.for_tenant(clinic).get()
    series_thumbnail(tenant_id=str(clinic.pk), series_id=str(series.pk))

    assert response.json()["summary"] == "stored 3, duplicate 1, rejected 0"
    assert Series.objects.for_tenant(clinic).get().thumbnail_status == "ready"
    assert _files_containing(data_dir, _needles()) == []
    assert _files_containing(scratch, _needles()) == []
    # Not vacuous: the upload was spooled, to a file kept where the spool writes.
    assert any(p.stat().st_size > 1024 for p in (data_dir / "spool").rglob("*"))
    # Three instances and the thumbnail, none of them readable as what they hold.
    stored = [p.read_bytes() for p in (data_dir / "objects").rglob("*") if p.is_file()]
    assert len(stored) == 4
    assert [content[:8] for content in stored if _looks_clear(content)] == []
    assert published, "the thumbnail task was not enqueued"
    for message in published:
        assert NAME.split("^")[0] not in message and PATIENT_ID not in message
    assert NAME.split("^")[0] not in caplog.text
    assert PATIENT_ID not in caplog.text


def _named(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def _redis_values(client, key) -> list[bytes]:
    """A key and everything it holds, whatever its type (kombu keeps lists, sets and
    sorted sets; results are strings)."""
    kind = client.type(key)
    values = [key]
    if kind == b"string":
        values.append(client.get(key) or b"")
    elif kind == b"list":
        values += client.lrange(key, 0, -1)
    elif kind == b"hash":
        values += [part for item in client.hgetall(key).items() for part in item]
    elif kind == b"set":
        values += list(client.smembers(key))
    elif kind == b"zset":
        values += client.zrange(key, 0, -1)
    elif kind == b"stream":
        values += [repr(entry).encode() for entry in client.xrange(key)]
    return values + [body for value in values for body in _message_bodies(value)]


def _message_bodies(value: bytes) -> list[bytes]:
    """A kombu message keeps its body base64-encoded: where PHI would be, decoded."""
    import base64
    import json

    try:
        message = json.loads(value)
        return [base64.b64decode(message["body"])]
    except (ValueError, TypeError, KeyError):
        return []


@pytest.mark.django_db
def test_no_phi_in_redis(clinic, settings, django_capture_on_commit_callbacks):
    require_service(
        "Redis",
        bool(settings.REDIS_URL) and tcp_reachable(settings.REDIS_URL, 6379),
        "set REDIS_URL to check what reaches Redis",
    )
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()  # what is there afterwards was put there by this ingest
    app.conf.task_always_eager = False  # the messages go to Redis and wait there
    try:
        with (
            celery_broker(settings.REDIS_URL),
            django_capture_on_commit_callbacks(execute=True),
        ):
            for data in synthetic_ct(slices=2, patient_name=NAME, patient_id=PATIENT_ID):
                ingest(clinic, data)
        stored = {key: _redis_values(client, key) for key in client.scan_iter(count=1000)}
    finally:
        app.conf.task_always_eager = True
        client.flushdb()  # no worker of a later test runs this test's tasks

    leaked = [key for key, values in stored.items() for v in values for n in _needles() if n in v]
    assert leaked == []
    # Not vacuous: the thumbnail task's message reached Redis.
    assert any(b"series_thumbnail" in value for values in stored.values() for value in values)


@pytest.mark.django_db
def test_flipped_bit_is_an_integrity_error_and_audited(clinic, data_dir):
    result = ingest(clinic, sample_bytes("CT_small.dcm"))
    instance = Instance.objects.for_tenant(clinic).get(pk=result.instance_id)
    flip_a_stored_byte(data_dir, instance.storage_key)

    with pytest.raises(IntegrityError):
        instance_bytes(instance=instance, actor=INGEST_ACTOR)

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert event.target_id == str(instance.pk)


@pytest.mark.django_db
def test_swapped_objects_are_integrity_errors(clinic, data_dir):
    first, second = (ingest(clinic, data) for data in synthetic_ct(slices=2))
    a = Instance.objects.for_tenant(clinic).get(pk=first.instance_id)
    b = Instance.objects.for_tenant(clinic).get(pk=second.instance_id)
    path_a, path_b = (data_dir / "objects" / x.storage_key for x in (a, b))
    blob_a, blob_b = path_a.read_bytes(), path_b.read_bytes()
    path_a.write_bytes(blob_b)
    path_b.write_bytes(blob_a)

    for instance in (a, b):
        with pytest.raises(IntegrityError):
            instance_bytes(instance=instance, actor=INGEST_ACTOR)
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.INTEGRITY_FAILED).count() == 2


@pytest.mark.django_db
def test_missing_object_is_an_integrity_error(clinic, data_dir):
    result = ingest(clinic, sample_bytes("CT_small.dcm"))
    instance = Instance.objects.for_tenant(clinic).get(pk=result.instance_id)
    (data_dir / "objects" / instance.storage_key).unlink()

    with pytest.raises(IntegrityError):
        instance_bytes(instance=instance, actor=INGEST_ACTOR)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("magic", "kind"),
    [
        (b"MZ\x90\x00", "Windows executable (MZ)"),
        (b"\x7fELF\x02\x01", "ELF executable"),
        (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    ],
)
def test_executable_preamble_is_zeroed_and_audited(magic, kind, clinic):
    data = synthetic_ct(slices=1)[0]
    hostile = magic + data[len(magic) : 128] + data[128:]

    result = ingest(clinic, hostile)

    instance = Instance.objects.for_tenant(clinic).get(pk=result.instance_id)
    stored = instance_bytes(instance=instance, actor=INGEST_ACTOR)
    assert stored[:128] == b"\0" * 128
    assert stored[128:] == data[128:]
    import hashlib

    assert instance.original_sha256 == hashlib.sha256(hostile).hexdigest()
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.PREAMBLE_NEUTRALISED)
    assert event.detail["preamble"] == kind
    assert event.target_id == str(instance.pk)


@pytest.mark.django_db
def test_objects_are_private_files(clinic, data_dir):
    result = ingest(clinic, sample_bytes("CT_small.dcm"))
    instance = Instance.objects.for_tenant(clinic).get(pk=result.instance_id)
    path = data_dir / "objects" / instance.storage_key

    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    from imaging.storage import NoPublicURL, storage_for

    with pytest.raises(NoPublicURL):
        storage_for(clinic).url(instance.storage_key)


@pytest.mark.django_db
def test_a_clinics_first_object_is_durable_with_its_new_folder(clinic, data_dir, monkeypatch):
    from imaging import storage

    synced = []
    real = storage.sync_directory
    monkeypatch.setattr(storage, "sync_directory", lambda path: synced.append(path) or real(path))

    result = ingest(clinic, sample_bytes("CT_small.dcm"))

    folder = (
        data_dir
        / "objects"
        / Instance.objects.for_tenant(clinic).get(pk=result.instance_id).storage_key
    ).parent
    assert folder.parent in synced  # the clinic's new folder, recorded in the root
    assert folder in synced  # the object, recorded in the clinic's folder


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_object_is_on_disk_for_good_before_its_row_commits(clinic, data_dir, monkeypatch):
    import os

    from django.db import connection

    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_commit = os.fsync, os.replace, connection.commit

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.fspath(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(
        connection, "commit", lambda: events.append(("commit", "")) or real_commit()
    )

    result = ingest(clinic, sample_bytes("CT_small.dcm"))

    key = Instance.objects.for_tenant(clinic).get(pk=result.instance_id).storage_key
    path = str((data_dir / "objects" / key).resolve())
    synced_parts = [i for i, (e, p) in enumerate(events) if e == "fsync" and ".part" in p]
    assert synced_parts, "the object's bytes were never synced to the disk"
    written = synced_parts[0]
    renamed = events.index(("rename", path))
    listed = events.index(("fsync", os.path.dirname(path)))
    committed = events.index(("commit", ""), renamed)
    # The bytes reach the disk, then the name, then the directory entry; the row after.
    assert written < renamed < listed < committed
    assert events[written][1].startswith(os.path.dirname(path) + "/.")
