"""Reading instances whose headers hold values pydicom cannot convert.

Ingest accepts such files (the values are odd, not dangerous): a person name with an
empty value among several, a number that is text. Metadata requests must answer with
what the standard allows, from the kept header or from the stored object; rendering
must treat such a number as absent; and no log line or warning may quote the values.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from imaging.dicom import BULK_DATA_THRESHOLD
from imaging.dicom_json import dataset_json
from imaging.models import Instance, Series
from imaging.render import rendered
from imaging.tasks import series_thumbnail
from tests.imaging_tests.dicomweb_support import (
    BASE,
    dicomweb,
    http,
    series_metadata_url,
    token_for,
)
from tests.imaging_tests.helpers import ingest, synthetic_ct

# The files pydicom ships (get_testdata_files would also try to download more).
BUNDLED = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
SPATIAL_RESOLUTION = b"\x18\x00\x50\x10"  # (0018,1050) DS
FRAMES = 'multipart/related; type="application/octet-stream"'
WINDOW_CENTER = b"\x28\x00\x50\x10"  # (0028,1050) DS
RESCALE_SLOPE = b"\x28\x00\x53\x10"  # (0028,1053) DS
WINDOW_WIDTH = b"\x28\x00\x51\x10"  # (0028,1051) DS
IMAGES_IN_ACQUISITION = b"\x20\x00\x02\x10"  # (0020,1002) IS


def _with_raw_values(data: bytes, values: dict[bytes, tuple[str, str]]) -> bytes:
    # pydicom will not write a DS or IS that is not a number, so each is written as LO
    # and its VR changed in the encoded bytes (explicit VR little endian).
    ds = pydicom.dcmread(io.BytesIO(data))
    for tag, (_vr, text) in values.items():
        ds.add_new(
            int.from_bytes(tag[:2], "little") << 16 | int.from_bytes(tag[2:], "little"), "LO", text
        )
    buffer = io.BytesIO()
    ds.save_as(buffer)
    encoded = buffer.getvalue()
    for tag, (vr, _text) in values.items():
        encoded = encoded.replace(tag + b"LO", tag + vr.encode())
    return encoded


@pytest.mark.django_db
@pytest.mark.parametrize("kept_header", [True, False], ids=["kept-header", "from-object"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Doe^John\\", [{"Alphabetic": "Doe^John"}, None]),
        ("\\Roe^Jane", [None, {"Alphabetic": "Roe^Jane"}]),
        (
            "Doe^John\\\\=山田",
            [{"Alphabetic": "Doe^John"}, None, {"Alphabetic": "", "Ideographic": "山田"}],
        ),
    ],
)
def test_a_name_with_an_empty_value_is_null_in_the_metadata(
    name, expected, kept_header, clinic, read_token
):
    (data,) = synthetic_ct(slices=1, patient_name=name, tags={"SpecificCharacterSet": "ISO_IR 192"})
    ingest(clinic, data)
    if not kept_header:
        Instance.objects.for_tenant(clinic).update(metadata=b"")

    response = http(read_token).get(series_metadata_url(data))

    assert response.status_code == 200
    assert response.json()[0]["00100010"] == {"vr": "PN", "Value": expected}


@pytest.mark.django_db
def test_search_results_and_metadata_agree_on_a_name_with_an_empty_value(clinic, read_token):
    (data,) = synthetic_ct(slices=1, patient_name="Doe^John\\")
    ingest(clinic, data)
    study_uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID

    (found,) = dicomweb(read_token).search_for_studies(
        search_filters={"StudyInstanceUID": study_uid}
    )
    metadata = http(read_token).get(series_metadata_url(data)).json()[0]

    assert found["00100010"] == metadata["00100010"]


@pytest.mark.django_db
@pytest.mark.parametrize("kept_header", [True, False], ids=["kept-header", "from-object"])
def test_numbers_that_are_not_numbers_keep_their_text(kept_header, clinic, read_token):
    (data,) = synthetic_ct(slices=1)
    data = _with_raw_values(
        data, {SPATIAL_RESOLUTION: ("DS", "0.5\\about 1 "), IMAGES_IN_ACQUISITION: ("IS", "1A")}
    )
    ingest(clinic, data)
    if not kept_header:
        Instance.objects.for_tenant(clinic).update(metadata=b"")

    response = http(read_token).get(series_metadata_url(data))

    assert response.status_code == 200
    item = response.json()[0]
    assert item["00181050"] == {"vr": "DS", "Value": [0.5, "about 1"]}  # CP 1861: strings
    assert item["00201002"] == {"vr": "IS", "Value": ["1A"]}


@pytest.mark.django_db
@pytest.mark.parametrize("kept_header", [True, False], ids=["kept-header", "from-object"])
def test_an_integer_string_that_is_not_an_integer_is_not_rounded(kept_header, clinic, read_token):
    (data,) = synthetic_ct(slices=1)
    data = _with_raw_values(data, {IMAGES_IN_ACQUISITION: ("IS", "1.5")})
    ingest(clinic, data)
    if not kept_header:
        Instance.objects.for_tenant(clinic).update(metadata=b"")

    item = http(read_token).get(series_metadata_url(data)).json()[0]

    assert item["00201002"] == {"vr": "IS", "Value": ["1.5"]}  # not 1
    assert item["00200013"]["Value"] == [1]  # a valid IS is still a number


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tag", "vr", "text"),
    [(WINDOW_CENTER, "DS", "abc"), (WINDOW_WIDTH, "DS", "wide"), (RESCALE_SLOPE, "DS", "x\\2")],
    ids=["window-centre", "window-width", "rescale-slope"],
)
def test_a_number_that_is_not_a_number_renders_as_if_absent(tag, vr, text, clinic, read_token):
    # The synthetic CT's window is the CT default and its slope 1, so without the odd
    # value it renders the same.
    (plain,) = synthetic_ct(slices=1, size=32)
    data = _with_raw_values(plain, {tag: (vr, text)})
    ingest(clinic, data)
    instance = series_metadata_url(data).replace("/metadata", "/instances/")
    instance += pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    session = http(read_token)

    image = session.get(f"{instance}/frames/1/rendered", headers={"Accept": "image/jpeg"})
    frame = session.get(f"{instance}/frames/1", headers={"Accept": FRAMES})
    series = Series.objects.for_tenant(clinic).get()
    series_thumbnail(tenant_id=str(clinic.pk), series_id=str(series.pk))

    assert image.status_code == 200
    assert image.content == rendered(pydicom.dcmread(io.BytesIO(plain)))
    assert frame.status_code == 200
    assert Series.objects.for_tenant(clinic).get().thumbnail_status == "ready"


@pytest.mark.django_db
def test_no_log_line_or_warning_quotes_an_odd_header_value(clinic, read_token, caplog):
    caplog.set_level(logging.DEBUG)
    (data,) = synthetic_ct(
        slices=1,
        patient_name="Quotedsurname" * 6 + "^Jo",  # a component over 64 characters
        tags={"PatientBirthDate": "19701399", "PatientAge": "Agetext"},
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ingest(clinic, data)
        http(read_token).get(series_metadata_url(data))
        Instance.objects.for_tenant(clinic).update(metadata=b"")
        http(read_token).get(series_metadata_url(data))

    said = caplog.text + "".join(str(w.message) for w in caught)
    for value in ("Quotedsurname", "19701399", "Agetext"):
        assert value not in said


def test_pydicom_log_lines_lose_their_quoted_values(caplog):
    caplog.set_level(logging.DEBUG)

    logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Quoted^Name'")

    assert "Quoted^Name" not in caplog.text
    assert "Invalid value for VR PN" in caplog.text


def test_every_bundled_header_comes_out_as_pydicom_writes_it_or_pydicom_could_not():
    threshold = BULK_DATA_THRESHOLD
    differ, pydicom_failed, unreadable = [], [], []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in BUNDLED:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # not a header this test is about
                unreadable.append(path.name)
                continue
            # never raises
            ours = dataset_json(ds, bulk_data_threshold=threshold, bulk_data_uri=lambda _: "")
            try:
                theirs = ds.to_json_dict(
                    bulk_data_threshold=threshold, bulk_data_element_handler=lambda _: ""
                )
            except Exception:
                pydicom_failed.append(path.name)
                continue
            if ours != theirs:
                differ.append(path.name)

    assert len(BUNDLED) - len(unreadable) > 60
    assert differ == []
    assert pydicom_failed == ["badVR.dcm"]  # invalid IS and DS values


STUDY_DATE = b"\x08\x00\x20\x00"  # (0008,0020) DA
STUDY_TIME = b"\x08\x00\x30\x00"  # (0008,0030) TM


@pytest.mark.django_db
@pytest.mark.parametrize(
    "odd",
    [
        {STUDY_DATE: ("DA", "2024-01-31"), STUDY_TIME: ("TM", "noon")},  # common in the wild
        {WINDOW_CENTER: ("DS", "1\\\\x"), SPATIAL_RESOLUTION: ("DS", "n/a")},
    ],
    ids=["date-and-time", "numbers"],
)
def test_odd_header_values_fail_no_page_or_endpoint(odd, clinic, client_for, radiologist):
    (data,) = synthetic_ct(slices=1, size=32)
    data = _with_raw_values(data, odd)
    ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    series = f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    instance = f"{series}/instances/{ds.SOPInstanceUID}"
    study = Instance.objects.for_tenant(clinic).get().study
    staff = client_for(radiologist)
    session = http(token_for(clinic, "dicomweb:read"))

    answers = {
        url: session.get(url, headers={"Accept": accept}).status_code
        for url, accept in [
            (f"{BASE}/studies?includefield=all", "application/dicom+json"),
            (f"{series}/metadata", "application/dicom+json"),
            (series, 'multipart/related; type="application/dicom"'),
            (f"{instance}/frames/1", FRAMES),
            (f"{instance}/rendered", "image/jpeg"),
        ]
    }
    for page in ("", f"studies/{study.pk}/", f"studies/{study.pk}/viewer/"):
        answers[page] = staff.get(f"/t/north/{page}").status_code

    assert answers == dict.fromkeys(answers, 200)
