"""Values pydicom cannot read as their VR, and numbers JSON cannot hold.

pydicom converts a value on first use, so a US of three bytes or an IS of "1e400" parses
and then fails whatever reads it: the metadata of the whole study, a de-identified copy.
Ingest refuses such a file and names the element; objects stored before it did are still
served, the element without its value (de-identified: without the element). NaN and
infinity, which decimal strings and binary floats can hold, go into metadata as text:
JSON has no number for them.
"""

from __future__ import annotations

import io
import json
import math

import pydicom
import pytest
from django.core.management import call_command
from django.test import Client
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from imaging import dicom, dicom_json
from imaging.ingest import IngestOutcome
from imaging.models import Instance, Study
from tests.imaging_tests.dicomweb_support import stow_files, token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct
from tests.sharing_tests.test_share_links import make_share, open_link

pytestmark = pytest.mark.django_db


def _with_raw(data: bytes, tag: int, vr: str, value: bytes) -> bytes:
    """`data` with the element `tag` written as the bytes `value`, unconverted."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


UNREADABLE = [
    (0x00200013, "IS", b"1e400 "),  # InstanceNumber, which the index reads
    (0x00200012, "IS", b"inf "),  # AcquisitionNumber, which only metadata reads
    (0x00280106, "US", b"\x01\x02\x03"),  # SmallestImagePixelValue: three bytes
    (0x00189087, "FD", b"\x00" * 6),  # DiffusionBValue: six bytes
]


def _strict_json(body: bytes):
    def refuse(token: str):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(body, parse_constant=refuse)


@pytest.mark.parametrize(("tag", "vr", "value"), UNREADABLE)
def test_a_value_that_cannot_be_read_as_its_vr_is_refused_and_named(clinic, tag, vr, value):
    (data,) = synthetic_ct(slices=1, size=16)

    result = ingest(clinic, _with_raw(data, tag, vr, value))

    assert result.outcome == IngestOutcome.REJECTED
    assert result.code == "invalid_value"
    assert str(Tag(tag)) in result.message and f"not a valid {vr}" in result.message
    assert not Instance.objects.for_tenant(clinic).exists()


def test_an_unreadable_value_inside_a_sequence_item_is_refused(clinic):
    (data,) = synthetic_ct(slices=1, size=16)

    ds = pydicom.dcmread(io.BytesIO(data))
    item = Dataset()
    item.InstanceNumber = "424242"  # then overwritten in place: pydicom would not write it
    ds.ReferencedImageSequence = Sequence([item])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert out.getvalue().count(b"424242") == 1

    result = ingest(clinic, out.getvalue().replace(b"424242", b"1e400 "))

    assert result.code == "invalid_value"
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.parametrize(("tag", "vr", "value"), UNREADABLE[:3])
def test_one_unreadable_file_fails_only_its_own_part_of_a_stow_rs_request(clinic, tag, vr, value):
    first, middle, last = synthetic_ct(slices=3, size=16)
    bad = _with_raw(middle, tag, vr, value)
    writer = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:write')}")

    response = stow_files(writer, [first, bad, last])

    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2
    (failed,) = body["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(bad)).SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xC000]
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.fixture
def stored_before_the_check(clinic, monkeypatch):
    """An instance with an unreadable SmallestImagePixelValue, stored as ingest did
    before it read every value."""
    (data,) = synthetic_ct(slices=1, size=16)
    unreadable = _with_raw(data, 0x00280106, "US", b"\x01\x02\x03")
    with monkeypatch.context() as before:
        before.setattr(dicom, "_check_structure", lambda ds, **limits: None)
        assert ingest(clinic, unreadable).outcome == IngestOutcome.STORED
    return Instance.objects.for_tenant(clinic).select_related("study", "series").get()


def test_metadata_of_such_an_object_gives_the_element_without_its_value(
    clinic, stored_before_the_check
):
    instance = stored_before_the_check
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")

    response = reader.get(f"/dicomweb/studies/{instance.study.study_uid}/metadata")

    assert response.status_code == 200
    (item,) = _strict_json(response.content)
    assert item["00280106"] == {"vr": "US"}
    assert item["00200013"]["Value"] == [1]


def test_a_deidentified_copy_of_such_an_object_leaves_the_element_out(
    client, clinic, radiologist, stored_before_the_check
):
    instance = stored_before_the_check
    study = Study.objects.for_tenant(clinic).get()
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    base = f"/s/dicomweb/studies/{study.study_uid}"
    url = f"{base}/series/{instance.series.series_uid}/instances/{instance.sop_instance_uid}"

    metadata = client.get(f"{base}/metadata")
    retrieved = client.get(url, HTTP_ACCEPT='multipart/related; type="application/dicom"')
    download = client.get("/s/download/")

    assert metadata.status_code == 200
    (item,) = _strict_json(metadata.content)
    assert "00280106" not in item and item["00100010"]["Value"] == [{"Alphabetic": "ANONYMOUS"}]
    assert retrieved.status_code == 200
    body = b"".join(retrieved.streaming_content)
    assert b"\x28\x00\x06\x01" not in body[body.index(b"DICM") :]
    assert download.status_code == 200


def _with_special_numbers(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.WindowCenter = pydicom.valuerep.DSfloat("nan", auto_format=False, validation_mode=0)
    ds.SliceThickness = pydicom.valuerep.DSfloat("1e999", auto_format=False, validation_mode=0)
    ds.DiffusionBValue = math.nan  # FD
    ds.DiffusionGradientOrientation = [math.inf, -math.inf, 2.5]  # FD
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_nan_and_infinity_are_given_as_text_in_valid_json(clinic):
    (data,) = synthetic_ct(slices=1, size=16)
    assert ingest(clinic, _with_special_numbers(data)).outcome == IngestOutcome.STORED
    study = Study.objects.for_tenant(clinic).get()
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")

    response = reader.get(f"/dicomweb/studies/{study.study_uid}/metadata")

    (item,) = _strict_json(response.content)
    assert item["00281050"]["Value"] == ["nan"]  # DS keeps its text
    assert item["00180050"]["Value"] == ["1e999"]
    assert item["00189087"]["Value"] == ["NaN"]  # FD
    assert item["00189089"]["Value"] == ["inf", "-inf", 2.5]


def test_a_header_kept_with_bare_nan_is_rebuilt_on_read_and_by_the_backfill(clinic, monkeypatch):
    (data,) = synthetic_ct(slices=1, size=16)
    with monkeypatch.context() as before:  # headers as kept before NaN was written as text
        before.setattr(dicom_json, "_finite_json", lambda result, element: result)
        assert ingest(clinic, _with_special_numbers(data)).outcome == IngestOutcome.STORED
    study = Study.objects.for_tenant(clinic).get()
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")

    response = reader.get(f"/dicomweb/studies/{study.study_uid}/metadata")
    first, again = io.StringIO(), io.StringIO()
    call_command("instance_headers_backfill", stdout=first)
    call_command("instance_headers_backfill", stdout=again)

    (item,) = _strict_json(response.content)
    assert item["00189087"]["Value"] == ["NaN"]
    assert first.getvalue().strip().endswith("1 instance headers kept")
    assert again.getvalue().strip().endswith("0 instance headers kept")
