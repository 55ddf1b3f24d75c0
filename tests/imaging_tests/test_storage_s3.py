"""S3-compatible storage per clinic, against a real local S3 server (moto in server mode)."""

from __future__ import annotations

import io
import re
import uuid

import pydicom
import pytest
from django.test import Client
from django.utils import timezone

from imaging import storage as storage_module
from imaging.ingest import IngestOutcome, ingest_many
from imaging.models import Instance
from imaging.services import instance_bytes, orphan_sweep
from imaging.storage import NoPublicURL, object_key_new, object_write, storage_for
from portal.views import readiness_reset
from tests.helpers import s3_client
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import INGEST_ACTOR, ingest, synthetic_ct


@pytest.fixture
def s3_clinic(clinic, settings, s3_endpoint):
    settings.STORAGE_S3_ENDPOINT_URL = s3_endpoint
    settings.STORAGE_S3_ACCESS_KEY_ID = "testing"
    settings.STORAGE_S3_SECRET_ACCESS_KEY = "testing"
    storage_module._s3_storage.cache_clear()
    clinic.storage_backend = clinic.StorageBackend.S3
    clinic.storage_bucket = f"north-{uuid.uuid4().hex[:12]}"
    clinic.storage_region = "eu-central-1"
    clinic.save()
    client = s3_client(s3_endpoint)
    client.create_bucket(
        Bucket=clinic.storage_bucket,
        CreateBucketConfiguration={"LocationConstraint": "eu-central-1"},
    )
    yield clinic
    storage_module._s3_storage.cache_clear()


@pytest.mark.django_db
def test_clinic_on_s3_stores_encrypted_objects_in_its_own_bucket(s3_clinic, s3_endpoint, data_dir):
    (data,) = synthetic_ct(slices=1, patient_name="Bucket^Person", patient_id="S3-ID-42")

    result = ingest(s3_clinic, data)

    instance = Instance.objects.for_tenant(s3_clinic).get(pk=result.instance_id)
    client = s3_client(s3_endpoint)
    listed = client.list_objects_v2(Bucket=s3_clinic.storage_bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == [instance.storage_key]
    blob = client.get_object(Bucket=s3_clinic.storage_bucket, Key=instance.storage_key)[
        "Body"
    ].read()
    assert b"Bucket^Person" not in blob and b"S3-ID-42" not in blob
    assert instance_bytes(instance=instance, actor=INGEST_ACTOR)[128:] == data[128:]
    assert not (data_dir / "objects").exists()
    with pytest.raises(NoPublicURL):
        storage_for(s3_clinic).url(instance.storage_key)


def test_a_stow_batch_on_s3_writes_every_object_encrypted(s3_clinic, s3_endpoint):
    files = synthetic_ct(slices=5, patient_name="Batch^Person", patient_id="S3-BATCH-7")

    results = ingest_many(
        tenant=s3_clinic, actor=INGEST_ACTOR, items=[(f"{i}.dcm", f) for i, f in enumerate(files)]
    )

    rows = list(Instance.objects.for_tenant(s3_clinic).order_by("instance_number"))
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=s3_clinic.storage_bucket)["Contents"]
    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 5
    assert sorted(obj["Key"] for obj in listed) == sorted(row.storage_key for row in rows)
    for row, data in zip(rows, files, strict=True):
        blob = (
            s3_client(s3_endpoint)
            .get_object(Bucket=s3_clinic.storage_bucket, Key=row.storage_key)["Body"]
            .read()
        )
        assert b"Batch^Person" not in blob and b"S3-BATCH-7" not in blob
        assert instance_bytes(instance=row, actor=INGEST_ACTOR)[128:] == data[128:]


@pytest.mark.django_db
def test_orphan_sweep_on_s3_removes_only_unreferenced_objects(s3_clinic, s3_endpoint):
    result = ingest(s3_clinic, synthetic_ct(slices=1)[0])
    storage = storage_for(s3_clinic)
    object_write(storage, object_key_new(s3_clinic), [b"left by a crash"])

    removed = orphan_sweep(tenant=s3_clinic, older_than=timezone.now() + timezone.timedelta(1))

    keys = [
        o["Key"]
        for o in s3_client(s3_endpoint).list_objects_v2(Bucket=s3_clinic.storage_bucket)["Contents"]
    ]
    assert removed == 1
    assert keys == [Instance.objects.for_tenant(s3_clinic).get(pk=result.instance_id).storage_key]


@pytest.mark.django_db
def test_a_series_retrieved_over_wado_rs_comes_whole_from_the_bucket(s3_clinic):
    # The objects are read on reader threads, each with its own S3 connection.
    files = synthetic_ct(slices=4)
    for data in files:
        ingest(s3_clinic, data)
    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(s3_clinic, 'dicomweb:read')}")

    response = reader.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
        HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    body = b"".join(response.streaming_content)

    assert response.status_code == 200
    assert int(response["Content-Length"]) == len(body)
    boundary = re.search(r"boundary=([^;]+)", response["Content-Type"])[1].encode()
    parts = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in body.split(b"--" + boundary)[1:-1]]
    assert parts == files


@pytest.mark.django_db
def test_an_s3_object_is_read_as_it_arrives_not_fetched_whole_first(s3_clinic):
    import os
    import tracemalloc

    from imaging.storage import object_open

    storage = storage_for(s3_clinic)
    key = object_key_new(s3_clinic)
    size = 24 * 1024 * 1024
    object_write(storage, key, [os.urandom(1024 * 1024) for _ in range(size // (1024 * 1024))])

    tracemalloc.start()
    try:
        with object_open(storage, key) as handle:
            first = handle.read(1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(first) == 1024
    assert peak < size // 4


@pytest.mark.django_db
def test_a_missing_s3_object_is_file_not_found(s3_clinic):
    from imaging.storage import object_open

    with pytest.raises(FileNotFoundError):
        object_open(storage_for(s3_clinic), object_key_new(s3_clinic))


@pytest.mark.django_db
def test_readyz_asks_every_active_clinics_bucket(s3_clinic, other_clinic, settings, tmp_path):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    reachable = Client().get("/readyz")
    other_clinic.storage_backend = other_clinic.StorageBackend.S3
    other_clinic.storage_bucket = f"south-missing-{uuid.uuid4().hex[:8]}"
    other_clinic.save()
    readiness_reset()  # the next probe, past the seconds an answer is kept

    missing = Client().get("/readyz")

    assert reachable.status_code == 200, reachable.json()
    assert missing.status_code == 503
    assert missing.json()["failing"] == ["storage"]
    assert other_clinic.storage_bucket not in missing.content.decode()
