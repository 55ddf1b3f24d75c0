"""A file whose meta names another instance than its data set is stored corrected.

PS3.10 7.1 has the file meta's Media Storage SOP Instance and Class UIDs equal the data
set's. De-identification tools often change the data set and leave the meta, so such
files are common (pydicom's own rtdose.dcm is one). The portal keeps the data set's
UIDs, which every search and retrieve uses, sets the meta to them, leaves the data set's
bytes as they were, and tells a STOW-RS sender with warning B000 (coercion of data
elements) and a 202.
"""

from __future__ import annotations

import hashlib
import io
import struct

import pydicom
import pytest
from django.test import Client
from pydicom.uid import generate_uid

from audit.models import Action, AuditEvent
from imaging.dicom import DicomRejected, dataset_offset, parse_part10
from imaging.ingest import IngestOutcome
from imaging.models import Instance
from imaging.services import instance_bytes
from tests.imaging_tests.dicomweb_support import stow_files, token_for
from tests.imaging_tests.helpers import INGEST_ACTOR, ingest, synthetic_ct

LIMITS = {"max_bytes": 1 << 30, "max_depth": 16, "max_elements": 500_000}
WARNING_COERCION = 0xB000


def _with_meta(data: bytes, **meta: str) -> bytes:
    """`data` with its file meta elements set as given (the data set untouched)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    written = out.getvalue()
    reread = pydicom.dcmread(io.BytesIO(written))
    for keyword, value in meta.items():
        assert getattr(reread.file_meta, keyword) == value  # the test file is what it says
    return written


def _data_set(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


@pytest.fixture
def mismatched() -> bytes:
    # A longer UID than the data set's, so correcting the meta moves the data set.
    (data,) = synthetic_ct(slices=1, size=16)
    return _with_meta(data, MediaStorageSOPInstanceUID=generate_uid() + ".123456")


def test_the_meta_is_set_to_the_data_sets_uids_and_the_data_set_kept(mismatched):
    parsed = parse_part10(mismatched, **LIMITS)

    stored = pydicom.dcmread(io.BytesIO(parsed.data))
    assert parsed.corrected == ("MediaStorageSOPInstanceUID",)
    assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    assert parsed.sop_instance_uid == stored.SOPInstanceUID
    assert _data_set(parsed.data) == _data_set(mismatched)
    assert parsed.sha256 == hashlib.sha256(parsed.data).hexdigest()
    assert parsed.original_sha256 == hashlib.sha256(mismatched).hexdigest()


def test_the_pixel_layout_points_into_the_corrected_file(mismatched):
    parsed = parse_part10(mismatched, **LIMITS)

    offset, length = parsed.pixel_layout["offset"], parsed.pixel_layout["length"]
    assert len(parsed.data) != len(mismatched)  # the data set moved
    assert (
        parsed.data[offset : offset + length] == pydicom.dcmread(io.BytesIO(parsed.data)).PixelData
    )


def test_a_meta_naming_another_sop_class_is_corrected_too():
    (data,) = synthetic_ct(slices=1, size=16)
    sent = _with_meta(data, MediaStorageSOPClassUID="1.2.840.10008.5.1.4.1.1.7")

    parsed = parse_part10(sent, **LIMITS)

    assert parsed.corrected == ("MediaStorageSOPClassUID",)
    assert pydicom.dcmread(io.BytesIO(parsed.data)).file_meta.MediaStorageSOPClassUID == (
        parsed.sop_class_uid
    )


def test_a_matching_meta_leaves_the_file_as_it_was():
    (data,) = synthetic_ct(slices=1, size=16)

    parsed = parse_part10(data, **LIMITS)

    assert parsed.corrected == ()
    assert parsed.data == data


def test_a_meta_too_odd_to_rewrite_is_refused_with_a_reason(mismatched):
    # An implicit VR element inside group 0002: pydicom reads it, but where the data set
    # starts is then a matter of reading, and the meta is not rewritten on a guess.
    start = dataset_offset(mismatched)
    extra = struct.pack("<HHI", 0x0002, 0x0016, 4) + b"AE01"
    (group_length,) = struct.unpack_from("<I", mismatched, 140)
    odd = (
        mismatched[:140]
        + struct.pack("<I", group_length + len(extra))
        + mismatched[144:start]
        + extra
        + mismatched[start:]
    )
    assert dataset_offset(odd) is None

    with pytest.raises(DicomRejected) as refused:
        parse_part10(odd, **LIMITS)

    assert refused.value.code == "meta_mismatch"
    assert "does not name the SOP instance" in refused.value.message


# --- Stored, and what a STOW-RS sender is told --------------------------------------------


@pytest.mark.django_db
def test_ingest_keeps_the_hash_as_received_and_audits_the_correction(clinic, mismatched):
    result = ingest(clinic, mismatched)

    assert result.outcome == IngestOutcome.STORED
    assert result.corrected == ("MediaStorageSOPInstanceUID",)
    assert "file meta information corrected" in result.message  # the upload page shows it
    row = Instance.objects.for_tenant(clinic).get()
    stored = instance_bytes(instance=row, actor=INGEST_ACTOR)
    assert row.sha256 == hashlib.sha256(stored).hexdigest()
    assert row.original_sha256 == hashlib.sha256(mismatched).hexdigest()
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.INSTANCE_STORED)
    assert event.detail["meta_corrected"] == ["MediaStorageSOPInstanceUID"]


def _referenced(response) -> dict[str, dict]:
    items = response.json()["00081199"]["Value"]
    return {item["00081155"]["Value"][0]: item for item in items}


@pytest.mark.django_db
def test_stow_rs_warns_of_the_correction_for_that_instance_only(clinic, mismatched):
    (good,) = synthetic_ct(slices=1, size=16)
    writer = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:write')}")

    response = stow_files(writer, [good, mismatched])

    assert response.status_code == 202
    assert "00081198" not in response.json()  # nothing failed
    items = _referenced(response)
    corrected_uid = pydicom.dcmread(io.BytesIO(mismatched)).SOPInstanceUID
    good_uid = pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    assert items[corrected_uid]["00081196"] == {"vr": "US", "Value": [WARNING_COERCION]}
    assert "00081196" not in items[good_uid]
    assert Instance.objects.for_tenant(clinic).count() == 2

    again = stow_files(writer, [mismatched])  # a retry is a duplicate, told the same

    assert again.status_code == 202
    assert _referenced(again)[corrected_uid]["00081196"]["Value"] == [WARNING_COERCION]
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_stow_rs_of_files_stored_as_sent_is_a_plain_200(clinic):
    writer = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:write')}")

    response = stow_files(writer, synthetic_ct(slices=2, size=16))

    assert response.status_code == 200
    assert all("00081196" not in item for item in _referenced(response).values())


@pytest.mark.django_db
def test_the_retrieved_file_names_its_own_instance(clinic, other_clinic, mismatched):
    ingest(clinic, mismatched)
    ds = pydicom.dcmread(io.BytesIO(mismatched), stop_before_pixels=True)
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")
    outsider = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other_clinic, 'dicomweb:read')}")

    response = reader.get(
        url, HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*'
    )

    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    start = body.index(b"DICM") - 128
    retrieved = pydicom.dcmread(io.BytesIO(body[start:]), stop_before_pixels=True)
    assert retrieved.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert outsider.get(url).status_code == 404


def _meta_vr(data: bytes, element: int, vr: bytes) -> bytes:
    """`data` with a meta element's VR bytes swapped (its length and value kept)."""
    tag = struct.pack("<HH", 0x0002, element)
    at = data.index(tag + b"UI", 132)
    return data[:at] + tag + vr + data[at + 6 :]


ODD_METAS = [
    pytest.param(0x0003, b"DS", id="instance-uid-as-DS"),
    pytest.param(0x0003, b"AT", id="instance-uid-as-AT"),
    pytest.param(0x0002, b"US", id="class-uid-as-US"),
    pytest.param(0x0002, b"SQ", id="class-uid-as-SQ"),
]


@pytest.mark.parametrize(("element", "vr"), ODD_METAS)
def test_a_meta_element_of_another_vr_is_replaced_or_refused_never_an_error(
    mismatched, element, vr
):
    odd = _meta_vr(mismatched, element, vr)

    try:
        parsed = parse_part10(odd, **LIMITS)
    except DicomRejected as refused:  # a clear reason, not a crash
        assert refused.code and refused.message.endswith(".")
        return
    stored = pydicom.dcmread(io.BytesIO(parsed.data))
    assert stored.file_meta["MediaStorageSOPInstanceUID"].VR == "UI"
    assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    assert stored.file_meta.MediaStorageSOPClassUID == stored.SOPClassUID
    assert _data_set(parsed.data) == _data_set(odd)


@pytest.mark.django_db
@pytest.mark.parametrize(("element", "vr"), ODD_METAS)
def test_an_odd_meta_fails_only_its_own_part_of_a_stow_rs_batch(clinic, mismatched, element, vr):
    (good,) = synthetic_ct(slices=1, size=16)
    writer = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:write')}")

    response = stow_files(writer, [good, _meta_vr(mismatched, element, vr)])

    assert response.status_code == 202
    good_uid = pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    assert good_uid in _referenced(response)
    body = response.json()
    # A part whose UIDs cannot be read fails in the Other Failures Sequence.
    failed = [
        item for key in ("00081198", "0008119A") for item in body.get(key, {}).get("Value", [])
    ]
    assert all(item["00081197"]["Value"] == [0xC000] for item in failed)
    assert Instance.objects.for_tenant(clinic).count() == 2 - len(failed)


@pytest.mark.django_db
def test_a_re_send_of_a_copy_stored_uncorrected_is_a_duplicate_without_the_warning(
    clinic, mismatched, monkeypatch
):
    from imaging import dicom

    with monkeypatch.context() as before_corrections:  # the object keeps the meta as sent
        before_corrections.setattr(dicom, "_meta_corrected", lambda data, ds, uids: (data, (), 0))
        assert ingest(clinic, mismatched).corrected == ()

    again = ingest(clinic, mismatched)

    assert again.outcome == IngestOutcome.DUPLICATE
    assert again.corrected == () and again.message == ""
