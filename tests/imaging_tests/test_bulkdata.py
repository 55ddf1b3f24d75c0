"""Bulk data: every BulkDataURI in metadata resolves, for the clinic that holds it only."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from pydicom.uid import generate_uid

from audit.models import Action, AuditEvent
from imaging.dicomweb import bulkdata
from imaging.keyring import study_dek
from imaging.metadata import metadata_open, metadata_seal
from imaging.models import Instance
from tests.imaging_tests.dicomweb_support import BASE, dicomweb, http, instance_url, token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct, with_large_values

pytestmark = pytest.mark.django_db

OCTET = {"Accept": 'multipart/related; type="application/octet-stream"'}


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _metadata(token: str, ds: pydicom.Dataset) -> dict:
    (item,) = http(token).get(f"{instance_url(ds)}/metadata").json()
    return item


@pytest.fixture
def large_values(clinic):
    data = with_large_values(synthetic_ct(slices=1)[0])
    ingest(clinic, data)
    return _ds(data)


def test_pixel_data_bulk_data_uri_returns_the_pixels(clinic, read_token):
    data = synthetic_ct(slices=1)[0]
    ingest(clinic, data)
    ds = _ds(data)

    pixel = _metadata(read_token, ds)["7FE00010"]
    (value,) = dicomweb(read_token).retrieve_bulkdata(pixel["BulkDataURI"])

    assert pixel["vr"] == "OW"
    assert pixel["BulkDataURI"] == f"{instance_url(ds)}/bulkdata/7FE00010"
    assert value == ds.PixelData


def test_uncompressed_pixel_data_comes_back_as_stored_bit_for_bit(clinic, read_token):
    ds = _ds(synthetic_ct(slices=1, size=16)[0])
    ds.BitsStored, ds.HighBit = 12, 11
    stored = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    stored[0] = 0xF123  # bits above Bits Stored (a retired overlay, say): not masked here
    ds.PixelData = stored.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    ingest(clinic, out.getvalue())

    (value,) = dicomweb(read_token).retrieve_bulkdata(f"{instance_url(ds)}/bulkdata/7FE00010")

    assert value == stored.tobytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("rtdose_expb.dcm", "rtdose.dcm"),  # 32-bit pixels, 15 frames
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),  # 8-bit held as OW
        ("rtdose.dcm", "rtdose.dcm"),  # native multi-frame: every frame, as stored
    ],
)
def test_uncompressed_pixel_data_comes_back_little_endian(clinic, read_token, name, expected):
    data = sample_bytes(name)
    ingest(clinic, data)

    (value,) = dicomweb(read_token).retrieve_bulkdata(
        f"{instance_url(_ds(data))}/bulkdata/7FE00010"
    )

    assert value == _ds(sample_bytes(expected)).PixelData


def test_compressed_multi_frame_pixel_data_comes_back_as_every_frame_decoded(clinic, read_token):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    (value,) = dicomweb(read_token).retrieve_bulkdata(f"{instance_url(ds)}/bulkdata/7FE00010")

    assert value == ds.pixel_array.tobytes() and len(value) == 2 * ds.Rows * ds.Columns * 3


def test_compressed_pixel_data_comes_back_decoded(clinic, read_token):
    data = sample_bytes("SC_rgb_jpeg_dcmtk.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    pixel = _metadata(read_token, ds)["7FE00010"]
    (value,) = dicomweb(read_token).retrieve_bulkdata(pixel["BulkDataURI"])

    assert pixel["vr"] == "OB"
    assert value == ds.pixel_array.tobytes()


def test_large_values_top_level_and_nested_have_uris_that_resolve(clinic, read_token, large_values):
    item = _metadata(read_token, large_values)
    client = dicomweb(read_token)

    private_uri = item["00091010"]["BulkDataURI"]
    icon_uri = item["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    (private,) = client.retrieve_bulkdata(private_uri)
    (icon,) = client.retrieve_bulkdata(icon_uri)

    assert private_uri == f"{instance_url(large_values)}/bulkdata/00091010"
    assert icon_uri == f"{instance_url(large_values)}/bulkdata/00880200/0/7FE00010"
    assert private == large_values[0x00091010].value
    assert icon == large_values.IconImageSequence[0].PixelData


def test_headers_kept_before_bulk_data_paths_are_rebuilt_with_them(
    clinic, read_token, large_values
):
    row = Instance.objects.for_tenant(clinic).get(sop_instance_uid=large_values.SOPInstanceUID)
    key = study_dek(study=row.study)
    context = {"key": key, "tenant_id": clinic.pk, "storage_key": row.storage_key}
    header = metadata_open(sealed=bytes(row.metadata), **context)
    stale = header.replace(b'"BulkDataURI":"bulkdata/00091010"', b'"BulkDataURI":""')
    assert stale != header
    row.metadata = metadata_seal(header_json=stale, **context)
    row.save(update_fields=["metadata"])

    item = _metadata(read_token, large_values)

    assert item["00091010"]["BulkDataURI"].endswith("/bulkdata/00091010")


def test_the_backfill_reseals_headers_kept_before_bulk_data_paths(clinic, large_values):
    ingest(clinic, synthetic_ct(slices=1)[0])  # a current header: left as it is
    row = Instance.objects.for_tenant(clinic).get(sop_instance_uid=large_values.SOPInstanceUID)
    context = {"key": study_dek(study=row.study), "tenant_id": clinic.pk}
    context["storage_key"] = row.storage_key
    header = metadata_open(sealed=bytes(row.metadata), **context)
    stale = header.replace(b'"BulkDataURI":"bulkdata/00091010"', b'"BulkDataURI":""')
    row.metadata = metadata_seal(header_json=stale, **context)
    row.save(update_fields=["metadata"])
    out = io.StringIO()

    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=out)

    assert f"{clinic.slug}: 1 instance headers kept" in out.getvalue()
    row.refresh_from_db()
    assert metadata_open(sealed=bytes(row.metadata), **context) == header


def test_an_object_without_pixel_data_has_no_pixel_uri(clinic, read_token):
    ds = _ds(synthetic_ct(slices=1)[0])
    del ds.PixelData
    for keyword in ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"]:
        delattr(ds, keyword)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    ingest(clinic, out.getvalue())

    item = _metadata(read_token, ds)
    response = http(read_token).get(f"{instance_url(ds)}/bulkdata/7FE00010", headers=OCTET)

    assert "7FE00010" not in item
    assert response.status_code == 404


def test_a_bulk_data_read_is_audited_with_its_path(clinic, read_token, large_values):
    http(read_token).get(f"{instance_url(large_values)}/bulkdata/00091010", headers=OCTET)

    event = AuditEvent.objects.for_tenant(clinic).order_by("-seq").first()
    assert event.action == Action.DICOMWEB_RETRIEVE
    assert event.detail["bulkdata"] == "00091010"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("00091010", 200),
        ("not-a-tag", 400),
        ("00091010/0", 400),
        ("00091011", 404),  # no such attribute
        ("00100010", 404),  # a name is metadata, not bulk data
        ("00880200/1/7FE00010", 404),  # no second item
        ("00100010/0/7FE00010", 404),  # not a sequence
    ],
)
def test_bulk_data_paths(clinic, read_token, large_values, path, status):
    response = http(read_token).get(f"{instance_url(large_values)}/bulkdata/{path}", headers=OCTET)

    assert response.status_code == status
    assert b"Traceback" not in response.content


def test_another_clinics_bulk_data_is_not_found(clinic, other_clinic, large_values):
    outsider = token_for(other_clinic, "dicomweb:read")

    response = http(outsider).get(f"{instance_url(large_values)}/bulkdata/00091010", headers=OCTET)
    missing = http(outsider).get(
        f"{BASE}/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/bulkdata/00091010",
        headers=OCTET,
    )

    assert response.status_code == missing.status_code == 404
    assert response.json() == missing.json()


@pytest.mark.parametrize("resource", ["frames/1", "bulkdata/00091010"])
@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jpeg"',
        "image/jpeg",
        'multipart/related; type="application/octet-stream"; q=0',
        'multipart/related; type="application/octet-stream"; q=0.',
        "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50",
        "application/dicom",
    ],
)
def test_frames_and_bulk_data_refuse_media_types_they_do_not_offer(
    clinic, read_token, large_values, resource, accept
):
    response = http(read_token).get(
        f"{instance_url(large_values)}/{resource}", headers={"Accept": accept}
    )

    assert response.status_code == 406


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "multipart/related",
        "*/*",
        "application/octet-stream",
        'multipart/related; type="image/jpeg", multipart/related; type=application/octet-stream',
        "multipart/related; type*=utf-8''application%2Foctet-stream",  # RFC 2231: was a 500
    ],
)
def test_frames_accept_what_they_offer(clinic, read_token, large_values, accept):
    response = http(read_token).get(
        f"{instance_url(large_values)}/frames/1", headers={"Accept": accept}
    )

    assert response.status_code == 200


def test_compressed_pixel_data_too_large_to_decode_at_once_is_refused_for_frames(
    clinic, read_token, monkeypatch
):
    data = sample_bytes("SC_rgb_jpeg_dcmtk.dcm")
    ingest(clinic, data)
    monkeypatch.setattr(bulkdata, "MAX_DECODED_BYTES", 1000)

    response = http(read_token).get(f"{instance_url(_ds(data))}/bulkdata/7FE00010", headers=OCTET)

    assert response.status_code == 406
    assert "frames" in response.json()["error"]


def test_one_frame_or_value_asked_for_as_octet_stream_comes_as_a_single_part(
    clinic, read_token, large_values
):
    url = instance_url(large_values)
    single = {"Accept": "application/octet-stream"}

    frame = http(read_token).get(f"{url}/frames/1", headers=single)
    value = http(read_token).get(f"{url}/bulkdata/00091010", headers=single)

    for response in (frame, value):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/octet-stream")
    assert frame.content == large_values.PixelData
    assert value.content == large_values[0x00091010].value


@pytest.mark.parametrize(
    ("accept", "frames", "answer"),
    [
        ("application/octet-stream", "1,2", 406),  # several frames need multipart
        (
            "application/octet-stream, multipart/related; type=application/octet-stream; q=0.5",
            "1,2",
            "multipart/related",
        ),
        (
            "application/octet-stream; q=0.5, multipart/related; type=application/octet-stream",
            "1",
            "multipart/related",
        ),
        ("*/*", "1", "multipart/related"),  # the default stays multipart
        ("application/*", "1", "application/octet-stream"),  # admits no multipart answer
        ("application/*", "1,2", 406),
    ],
)
def test_single_or_multipart_follows_accept(clinic, read_token, accept, frames, answer):
    data = sample_bytes("rtdose.dcm")
    ingest(clinic, data)

    response = http(read_token).get(
        f"{instance_url(_ds(data))}/frames/{frames}", headers={"Accept": accept}
    )

    if answer == 406:
        assert response.status_code == 406
    else:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(answer)


def _float_pixel_object() -> tuple[bytes, np.ndarray]:
    """A parametric-map-like object: 32-bit Float Pixel Data instead of Pixel Data."""
    ds = _ds(synthetic_ct(slices=1, size=16)[0])
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.BitsAllocated = 32
    values = np.linspace(-1.5, 2.5, 256, dtype="<f4")
    ds.FloatPixelData = values.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), values


def test_float_pixel_data_is_advertised_under_its_own_tag_and_resolves(clinic, read_token):
    data, values = _float_pixel_object()
    ingest(clinic, data)
    ds = _ds(data)

    item = _metadata(read_token, ds)
    (value,) = dicomweb(read_token).retrieve_bulkdata(item["7FE00008"]["BulkDataURI"])
    frame = http(read_token).get(
        f"{instance_url(ds)}/frames/1", headers={"Accept": "application/octet-stream"}
    )

    assert "7FE00010" not in item and item["7FE00008"]["vr"] == "OF"
    assert np.frombuffer(value, dtype="<f4").tolist() == values.tolist()
    assert frame.status_code == 200 and frame.content == value


def test_rows_stored_before_the_pixel_tag_was_kept_still_advertise_pixel_data(clinic, read_token):
    data = synthetic_ct(slices=1)[0]
    ingest(clinic, data)
    Instance.objects.for_tenant(clinic).update(pixel_tag=None)

    item = _metadata(read_token, _ds(data))

    assert item["7FE00010"]["vr"] == "OW"


def test_the_backfill_records_the_pixel_tag_of_rows_stored_before_it_was_kept(clinic, read_token):
    data, _ = _float_pixel_object()
    ingest(clinic, data)
    Instance.objects.for_tenant(clinic).update(pixel_tag=None)
    before = _metadata(read_token, _ds(data))

    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())

    assert "7FE00010" in before  # the old guess for a row that did not say
    assert Instance.objects.for_tenant(clinic).get().pixel_tag == "7FE00008"
    assert "7FE00008" in _metadata(read_token, _ds(data))
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.HEADERS_INDEXED).get()
    assert event.detail == {"instances": 1, "checked": 1, "unreadable": 0}


def test_truncated_float_pixel_data_is_rejected(clinic):
    data, _ = _float_pixel_object()
    ds = _ds(data)
    ds.FloatPixelData = ds.FloatPixelData[:100]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    result = ingest(clinic, out.getvalue())

    assert result.code == "truncated" and "Pixel data holds 100 bytes" in result.message
    assert not Instance.objects.for_tenant(clinic).exists()
