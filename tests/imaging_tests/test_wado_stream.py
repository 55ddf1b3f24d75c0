"""WADO-RS bodies: exact length announced, objects verified whole before they are sent.

Objects are read, decrypted and checked on reader threads a few instances ahead of the
one being sent; a failed check stops the body before any byte of the failed object.
"""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import Action, AuditEvent
from imaging import services
from imaging.crypto import IntegrityError
from imaging.dicomweb.views import wado
from imaging.models import Instance
from imaging.selectors import instances_for_reading
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import (
    INGEST_ACTOR,
    flip_a_stored_byte,
    ingest,
    read_until_integrity_failure,
    sample_bytes,
    synthetic_ct,
)

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT_LE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


@pytest.fixture
def reader(clinic):
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")


@pytest.fixture
def series(clinic, data_dir):
    """Five slices of one series, as stored, in instance-number order."""
    files = synthetic_ct(slices=5)
    for data in files:
        ingest(clinic, data)
    return files


def _series_url(files: list[bytes]) -> str:
    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def _parts(response, body: bytes) -> list[bytes]:
    boundary = re.search(r"boundary=([^;]+)", response["Content-Type"])[1].encode()
    pieces = body.split(b"--" + boundary)[1:-1]
    return [piece.split(b"\r\n\r\n", 1)[1][:-2] for piece in pieces]


def _instance(clinic, data: bytes) -> Instance:
    uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    return Instance.objects.for_tenant(clinic).get(sop_instance_uid=uid)


@pytest.mark.django_db
def test_a_series_comes_byte_exact_in_order_with_its_exact_length(series, reader):
    response = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)
    body = b"".join(response.streaming_content)

    assert response.status_code == 200
    assert "Transfer-Encoding" not in response
    assert int(response["Content-Length"]) == len(body)
    assert _parts(response, body) == series


@pytest.mark.django_db
def test_transcoded_parts_count_in_the_announced_length(clinic, data_dir, reader):
    data = sample_bytes("SC_rgb_jpeg_dcmtk.dcm")  # JPEG baseline, decoded on the way out
    ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    response = reader.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        HTTP_ACCEPT=EXPLICIT_LE,
    )
    body = b"".join(response.streaming_content)

    assert response.status_code == 200
    assert int(response["Content-Length"]) == len(body)
    (part,) = _parts(response, body)
    assert pydicom.dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


@pytest.mark.django_db
def test_an_altered_object_mid_series_stops_the_body_before_its_bytes(
    clinic, data_dir, series, reader
):
    altered = _instance(clinic, series[2])
    flip_a_stored_byte(data_dir, altered.storage_key)

    response = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)
    received, failure = read_until_integrity_failure(response)

    assert isinstance(failure, IntegrityError)
    assert series[0] in received and series[1] in received
    assert series[2][-4096:] not in received  # not a byte of its pixel data
    assert series[3] not in received
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert event.target_id == str(altered.pk)


@pytest.mark.django_db
def test_a_missing_object_stops_the_body_and_is_audited(clinic, data_dir, series, reader):
    missing = _instance(clinic, series[1])
    (data_dir / "objects" / missing.storage_key).unlink()

    response = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)
    received, failure = read_until_integrity_failure(response)

    assert isinstance(failure, IntegrityError)
    assert series[0] in received and series[2] not in received
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert (event.target_id, event.detail["reason"]) == (str(missing.pk), "object missing")


@pytest.mark.django_db
def test_a_row_whose_recorded_size_was_altered_is_not_served(read_ahead, clinic, series, reader):
    # The announced length comes from the rows: a body that disagreed with it would
    # be cut off or overrun at the client instead of failing here.
    Instance.objects.for_tenant(clinic).filter(pk=_instance(clinic, series[3]).pk).update(
        size_bytes=len(series[3]) + 1
    )

    response = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)
    received, failure = read_until_integrity_failure(response)

    assert isinstance(failure, IntegrityError)
    assert "size" in str(failure)
    assert series[3][-4096:] not in received


@pytest.mark.django_db
def test_objects_above_the_read_ahead_size_stream_the_same_body(series, reader, monkeypatch):
    ahead = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)
    monkeypatch.setattr(services, "READ_AHEAD_MAX_BYTES", 0)
    streamed = reader.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)

    assert _parts(ahead, b"".join(ahead.streaming_content)) == series
    assert _parts(streamed, b"".join(streamed.streaming_content)) == series


def _queries_to_read(reader, files: list[bytes]) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = reader.get(_series_url(files), HTTP_ACCEPT=ANY_SYNTAX)
        assert _parts(response, b"".join(response.streaming_content)) == files
    return len(queries)


@pytest.mark.django_db
def test_reading_a_series_takes_as_many_queries_for_six_slices_as_for_two(clinic, data_dir, reader):
    small = synthetic_ct(slices=2, series_uid="1.2.826.0.1.3680043.8.498.2")
    large = synthetic_ct(slices=6, series_uid="1.2.826.0.1.3680043.8.498.6")
    for data in small + large:
        ingest(clinic, data)
    _queries_to_read(reader, small)  # the clinic's key, unwrapped once per process

    assert _queries_to_read(reader, large) == _queries_to_read(reader, small)


@pytest.mark.django_db
def test_instances_read_together_share_one_study_and_series(clinic, series):
    rows = instances_for_reading(
        tenant=clinic, instances=Instance.objects.for_tenant(clinic).order_by("instance_number")
    )

    assert len(rows) == len(series)
    assert len({id(row.study) for row in rows}) == 1
    assert len({id(row.series) for row in rows}) == 1
    assert all(row.tenant is clinic for row in rows)
    assert "metadata" in rows[0].get_deferred_fields()


@pytest.mark.django_db
def test_reading_leaves_out_another_clinics_instances_even_if_asked(clinic, other_clinic, series):
    (theirs,) = synthetic_ct(slices=1)
    ingest(other_clinic, theirs)
    every_clinic = Instance.objects.filter(tenant__in=[clinic, other_clinic])

    rows = instances_for_reading(tenant=clinic, instances=every_clinic)

    assert len(rows) == len(series)
    assert {row.tenant_id for row in rows} == {clinic.pk}


@pytest.mark.django_db
def test_a_client_that_leaves_early_ends_the_reads_without_an_error(clinic, series):
    rows = [_instance(clinic, data) for data in series]
    stream = services.instances_chunks(instances=rows, actor=INGEST_ACTOR)

    first = b"".join(next(stream))
    stream.close()  # what the server does when the client goes away

    assert first == series[0]
    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.INTEGRITY_FAILED).exists()


@pytest.mark.django_db
def test_an_outsider_asking_for_the_series_gets_404(other_clinic, series):
    outsider = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other_clinic, 'dicomweb:read')}")

    response = outsider.get(_series_url(series), HTTP_ACCEPT=ANY_SYNTAX)

    assert response.status_code == 404
    assert b"DICM" not in response.content


# --- Objects prepared on the way out (re-encoded, de-identified) ------------------------

DEFAULT = 'multipart/related; type="application/dicom"'  # explicit VR little endian


def _implicit(files: list[bytes]) -> list[bytes]:
    """The files re-encoded as implicit VR little endian, as most modalities send them."""
    out = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


@pytest.fixture
def implicit_series(clinic, data_dir):
    files = _implicit(synthetic_ct(slices=4))
    for data in files:
        ingest(clinic, data)
    return files


@pytest.fixture
def transcodes(monkeypatch) -> list[int]:
    """Counts the objects re-encoded so far."""
    calls: list[int] = []
    real = wado._transcode

    def counted(data: bytes, target: str) -> bytes:
        calls.append(len(data))
        return real(data, target)

    monkeypatch.setattr(wado, "_transcode", counted)
    return calls


@pytest.mark.django_db
def test_a_series_re_encoded_on_the_way_out_holds_one_object_at_a_time(
    implicit_series, reader, transcodes, monkeypatch
):
    small = reader.get(_series_url(implicit_series), HTTP_ACCEPT=DEFAULT)
    small_body = b"".join(small.streaming_content)
    transcodes.clear()
    monkeypatch.setattr(wado, "PREPARE_AHEAD_BYTES", 0)  # as if the series were large

    response = reader.get(_series_url(implicit_series), HTTP_ACCEPT=DEFAULT)
    before_the_body = len(transcodes)
    body = b"".join(response.streaming_content)

    # Small enough to prepare ahead: every object ready, the exact length announced.
    assert int(small["Content-Length"]) == len(small_body)
    # Past the budget, the first object is prepared before the answer starts and each
    # of the others as its part goes out; the length is not known ahead.
    assert response.status_code == 200 and before_the_body == 1
    assert "Content-Length" not in response
    parts = _parts(response, body)
    assert len(transcodes) == len(parts) == len(implicit_series)
    for part, original in zip(parts, implicit_series, strict=True):
        sent = pydicom.dcmread(io.BytesIO(part))
        assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (sent.pixel_array == pydicom.dcmread(io.BytesIO(original)).pixel_array).all()
    assert _parts(small, small_body) == parts


@pytest.mark.django_db
def test_an_object_that_fails_to_re_encode_mid_answer_cuts_the_body_short(
    clinic, implicit_series, reader, monkeypatch
):
    monkeypatch.setattr(wado, "PREPARE_AHEAD_BYTES", 0)
    real, calls = wado._transcode, []

    def third_fails(data: bytes, target: str) -> bytes:
        calls.append(target)
        if len(calls) == 3:
            raise wado.NotAcceptable("cannot be decoded")
        return real(data, target)

    monkeypatch.setattr(wado, "_transcode", third_fails)

    response = reader.get(_series_url(implicit_series), HTTP_ACCEPT=DEFAULT)
    received = bytearray()
    with pytest.raises(wado.RetrieveCutShort):
        for chunk in response.streaming_content:
            received += chunk

    assert response.status_code == 200
    third = _instance(clinic, implicit_series[2])
    unserved = AuditEvent.objects.for_tenant(clinic).get(
        action=Action.DICOMWEB_RETRIEVE, outcome="failure"
    )
    assert (unserved.target_id, unserved.detail["cut_short"]) == (str(third.pk), True)
    # Never a whole-looking answer that lacks an object: no closing delimiter.
    boundary = re.search(r"boundary=([^;]+)", response["Content-Type"])[1].encode()
    assert received.count(b"--" + boundary) == 2 and b"--" + boundary + b"--" not in received


@pytest.mark.django_db
def test_an_object_too_large_to_re_encode_is_406_and_served_as_stored(
    implicit_series, reader, transcodes, monkeypatch
):
    monkeypatch.setattr(wado, "MAX_PREPARED_BYTES", len(implicit_series[0]) - 1)

    refused = reader.get(_series_url(implicit_series), HTTP_ACCEPT=DEFAULT)
    as_stored = reader.get(_series_url(implicit_series), HTTP_ACCEPT=ANY_SYNTAX)

    assert refused.status_code == 406
    assert "too large to re-encode at once" in refused.json()["error"]
    assert transcodes == []
    assert _parts(as_stored, b"".join(as_stored.streaming_content)) == implicit_series
