"""Frames and rendered frames: read and rendered on a reader thread while the read is
audited; nothing is answered before both are done.
"""

from __future__ import annotations

import io
import threading

import pydicom
import pytest
from django.db import DatabaseError, connection
from django.test import Client

from audit.models import Action, AuditEvent
from imaging import services, viewing
from imaging.models import Instance
from tests.helpers import response_bytes
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import flip_a_stored_byte, ingest, synthetic_ct

SUFFIXES = ["frames/1", "frames/1/rendered", "rendered"]


@pytest.fixture
def reader(clinic):
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")


@pytest.fixture
def slice_(clinic, data_dir):
    (data,) = synthetic_ct(slices=1)
    ingest(clinic, data)
    return data


def _url(data: bytes, suffix: str) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{suffix}"
    )


def _events(clinic, action: Action) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_tenant(clinic).filter(action=action))


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_frame_is_served_and_its_read_audited(suffix, clinic, slice_, reader):
    response = reader.get(_url(slice_, suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 200
    assert response_bytes(response)
    (event,) = _events(clinic, Action.DICOMWEB_RETRIEVE)
    assert event.target_id == str(Instance.objects.for_tenant(clinic).get().series_id)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        *((suffix, "*/*") for suffix in SUFFIXES),
        ("", "multipart/related; type=application/dicom"),
        ("metadata", "application/dicom+json"),
        ("bulkdata/7FE00010", "multipart/related; type=application/octet-stream"),
    ],
)
def test_a_read_of_one_instance_names_it_in_the_log(suffix, accept, clinic, data_dir, reader):
    # Two slices in the series: the series alone would not say which image was seen.
    series = synthetic_ct(slices=2)
    for data in series:
        ingest(clinic, data)
    first = series[0]
    sop = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True).SOPInstanceUID
    wanted = Instance.objects.for_tenant(clinic).get(sop_instance_uid=sop)

    response = reader.get(_url(first, suffix).rstrip("/"), HTTP_ACCEPT=accept)

    assert response.status_code == 200
    (event,) = _events(clinic, Action.DICOMWEB_RETRIEVE)
    assert event.target_id == str(wanted.series_id)  # the series' history still shows it
    assert event.detail["instance"] == str(wanted.pk)


@pytest.mark.django_db
def test_a_read_of_a_whole_series_counts_its_instances(clinic, data_dir, reader):
    series = synthetic_ct(slices=2)
    for data in series:
        ingest(clinic, data)
    first = series[0]
    series_url = _url(first, "").split("/instances/")[0]

    response = reader.get(series_url, HTTP_ACCEPT="multipart/related; type=application/dicom")

    assert response.status_code == 200
    b"".join(response.streaming_content)
    (event,) = _events(clinic, Action.DICOMWEB_RETRIEVE)
    assert event.detail == {"instances": 2}


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_altered_object_is_not_served_and_the_failure_is_audited(
    suffix, clinic, data_dir, slice_, reader
):
    instance = Instance.objects.for_tenant(clinic).get()
    flip_a_stored_byte(data_dir, instance.storage_key)

    response = reader.get(_url(slice_, suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 500
    assert "integrity check" in response.json()["error"]
    (failure,) = _events(clinic, Action.INTEGRITY_FAILED)
    assert failure.target_id == str(instance.pk)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "suffix",
    [*SUFFIXES, "bulkdata/7FE00010", "bulkdata/00091234"],  # the last: no such value
)
def test_content_other_than_the_rows_is_not_served_and_the_failure_is_audited(
    suffix, clinic, slice_, reader
):
    # A valid object of other content under the right name (a faulty re-encryption, a
    # key holder's swap): AES-GCM accepts it, the row's SHA-256 does not. The check runs
    # beside the rendering; its failure is the answer, whatever the rendering did.
    instance = Instance.objects.for_tenant(clinic).get()
    Instance.objects.for_tenant(clinic).update(sha256="0" * 64)

    response = reader.get(_url(slice_, suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 500
    assert "integrity check" in response.json()["error"]
    (failure,) = _events(clinic, Action.INTEGRITY_FAILED)
    assert failure.target_id == str(instance.pk)
    assert "SHA-256" in failure.detail["reason"]


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["frames/2", "frames/1,2", "frames/2/rendered"])
def test_a_frame_past_the_last_is_404_and_no_read_is_audited(suffix, clinic, slice_, reader):
    response = reader.get(_url(slice_, suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 404
    assert "frame 2 does not exist (the instance has 1)" in response.json()["error"]
    assert _events(clinic, Action.DICOMWEB_RETRIEVE) == []


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_no_pixels_leave_when_the_read_cannot_be_audited(suffix, clinic, slice_, monkeypatch):
    def audit_fails(**kwargs):
        raise DatabaseError("the audit append failed")

    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}",
        raise_request_exception=False,
    )
    monkeypatch.setattr(viewing.audit, "record", audit_fails)

    response = client.get(_url(slice_, suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 500
    assert b"\xff\xd8" not in response.content  # no JPEG
    assert len(response.content) < 2048  # no frame of 512x512 pixels either


@pytest.mark.django_db
def test_reader_threads_open_no_database_connection(clinic, slice_, reader):
    for suffix in SUFFIXES:
        assert reader.get(_url(slice_, suffix), HTTP_ACCEPT="*/*").status_code == 200
    both_threads = threading.Barrier(services.READ_AHEAD)

    def connection_opened() -> bool:
        both_threads.wait(timeout=10)  # so that each reader thread answers once
        return connection.connection is not None

    for pool in (services._readers(), services._checkers()):  # the checks' threads too
        futures = [pool.submit(connection_opened) for _ in range(services.READ_AHEAD)]
        assert [f.result(timeout=10) for f in futures] == [False] * services.READ_AHEAD
