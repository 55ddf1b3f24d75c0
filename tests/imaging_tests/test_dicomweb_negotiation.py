"""DICOMweb content negotiation (PS3.18 8.7): rendered images, thumbnails, metadata,
search results and store responses answer in a media type the Accept header admits, or
406 naming what is offered."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.test import Client
from PIL import Image

from audit.models import AuditEvent
from tests.imaging_tests.dicomweb_support import stow_files, token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

pytestmark = pytest.mark.django_db

BASE = "/dicomweb"
JPEG, PNG = b"\xff\xd8", b"\x89PNG"
# What browsers send for an <img>, as the worklist, study page and viewer load thumbnails.
CHROME_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX_IMG = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"


def _reader(tenant) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(tenant, 'dicomweb:read')}"})


@pytest.fixture
def stored(clinic, django_capture_on_commit_callbacks) -> pydicom.Dataset:
    with django_capture_on_commit_callbacks(execute=True):  # the thumbnail is rendered
        (data,) = synthetic_ct(slices=1)
        ingest(clinic, data)
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


@pytest.fixture
def theirs(other_clinic) -> pydicom.Dataset:
    (data,) = synthetic_ct(slices=1, patient_id="THEIRS-1")
    ingest(other_clinic, data)
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _instance(ds: pydicom.Dataset) -> str:
    return (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _series(ds: pydicom.Dataset) -> str:
    return f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


# --- Rendered ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "magic", "media_type"),
    [
        (None, JPEG, "image/jpeg"),
        ("*/*", JPEG, "image/jpeg"),
        ("image/*", JPEG, "image/jpeg"),
        ("image/png", PNG, "image/png"),
        ("image/jpeg;q=0.5, image/png", PNG, "image/png"),
        ("image/png, image/jpeg", PNG, "image/png"),  # equal q: the one listed first
        ("image/jpeg, image/png", JPEG, "image/jpeg"),
        ("image/*, image/jpeg;q=0", PNG, "image/png"),  # q=0 refuses JPEG
        ("image/png;q=0, */*", JPEG, "image/jpeg"),
        (CHROME_IMG, JPEG, "image/jpeg"),
        ("image/gif, image/png;q=0.2", PNG, "image/png"),  # GIF is not offered: PNG is
    ],
)
def test_rendered_answers_in_the_preferred_offered_type(clinic, stored, accept, magic, media_type):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}

    response = _reader(clinic).get(_instance(stored) + "/rendered", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    assert response.content[:4].startswith(magic)
    assert "Accept" in response["Vary"]


@pytest.mark.parametrize(
    "accept",
    ["image/tiff", "image/gif", "image/jpeg;q=0", "image/*;q=0", "application/dicom", "text/html"],
)
def test_rendered_refuses_what_it_cannot_send_with_a_406_naming_the_offer(clinic, stored, accept):
    response = _reader(clinic).get(_instance(stored) + "/frames/1/rendered", HTTP_ACCEPT=accept)

    assert response.status_code == 406
    assert "image/jpeg" in response.json()["error"]
    assert "image/png" in response.json()["error"]


def test_a_rendered_406_is_the_same_for_ours_theirs_and_a_missing_instance(
    clinic, other_clinic, stored, theirs
):
    reader = _reader(clinic)
    missing = _instance(stored).rsplit("/", 1)[0] + "/1.2.3.4.5.6.7"
    before = AuditEvent.objects.unscoped(reason="test").count()

    answers = [
        reader.get(url + "/rendered", HTTP_ACCEPT="image/tiff")
        for url in (_instance(stored), _instance(theirs), missing)
    ]

    assert {r.status_code for r in answers} == {406}
    assert len({r.content for r in answers}) == 1
    assert AuditEvent.objects.unscoped(reason="test").count() == before  # nothing read


# --- Thumbnails --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "magic", "media_type"),
    [
        (None, PNG, "image/png"),
        ("image/*", PNG, "image/png"),
        (CHROME_IMG, PNG, "image/png"),
        (FIREFOX_IMG, PNG, "image/png"),
        ("image/jpeg", JPEG, "image/jpeg"),
        ("image/png;q=0.4, image/jpeg;q=0.9", JPEG, "image/jpeg"),
    ],
)
def test_a_thumbnail_is_its_stored_png_unless_jpeg_is_preferred(
    clinic, stored, accept, magic, media_type
):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}

    response = _reader(clinic).get(_series(stored) + "/thumbnail", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    assert response.content.startswith(magic)
    assert Image.open(io.BytesIO(response.content)).size[0] > 0


def test_a_thumbnail_406_names_the_offer_and_says_nothing_of_the_study(
    clinic, other_clinic, stored, theirs
):
    reader = _reader(clinic)
    before = AuditEvent.objects.unscoped(reason="test").count()

    answers = [
        reader.get(f"{BASE}/studies/{uid}/thumbnail", HTTP_ACCEPT="image/gif")
        for uid in (stored.StudyInstanceUID, theirs.StudyInstanceUID, "1.2.3.4.5.6.7")
    ]

    assert {r.status_code for r in answers} == {406}
    assert len({r.content for r in answers}) == 1
    assert "image/png" in answers[0].json()["error"]
    assert AuditEvent.objects.unscoped(reason="test").count() == before


# --- Metadata ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("application/dicom+json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/dicom+json, application/json", "application/dicom+json"),
        (
            'multipart/related; type="application/dicom+xml", application/json;q=0.5',
            "application/json",
        ),
    ],
)
def test_metadata_answers_in_dicom_json_or_json(clinic, stored, accept, media_type):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}

    response = _reader(clinic).get(_series(stored) + "/metadata", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    (item,) = response.json()
    assert item["0020000E"]["Value"] == [stored.SeriesInstanceUID]


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom+xml"',
        "application/dicom+xml",
        "application/dicom+json;q=0",
        "application/*;q=0, */*;q=0",
        "text/html",
    ],
)
def test_metadata_refuses_xml_and_the_rest_with_a_clear_406(clinic, stored, accept):
    response = _reader(clinic).get(_instance(stored) + "/metadata", HTTP_ACCEPT=accept)

    assert response.status_code == 406
    error = response.json()["error"]
    assert "application/dicom+json" in error
    assert "application/dicom+xml" in error  # says XML is not offered


def test_a_metadata_406_is_the_same_for_ours_theirs_and_a_missing_study(
    clinic, other_clinic, stored, theirs
):
    reader = _reader(clinic)
    before = AuditEvent.objects.unscoped(reason="test").count()

    answers = [
        reader.get(f"{BASE}/studies/{uid}/metadata", HTTP_ACCEPT="application/dicom+xml")
        for uid in (stored.StudyInstanceUID, theirs.StudyInstanceUID, "1.2.3.4.5.6.7")
    ]

    assert {r.status_code for r in answers} == {406}
    assert len({r.content for r in answers}) == 1
    assert AuditEvent.objects.unscoped(reason="test").count() == before


# --- Search (QIDO-RS) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/dicom+json", "application/dicom+json"),
        (CHROME_IMG, "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/json, application/dicom+json;q=0.5", "application/json"),
    ],
)
def test_search_answers_in_the_json_type_the_client_prefers(clinic, stored, accept, media_type):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}

    response = _reader(clinic).get(f"{BASE}/studies", **headers)

    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    assert response.json()[0]["0020000D"]["Value"] == [stored.StudyInstanceUID]
    assert "Accept" in response["Vary"]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [(None, "application/dicom+json"), ("application/json", "application/json")],
)
def test_the_store_response_is_in_the_json_type_the_client_prefers(clinic, accept, media_type):
    (data,) = synthetic_ct(slices=1)
    headers = {"Authorization": f"Bearer {token_for(clinic, 'dicomweb:write')}"}
    if accept is not None:
        headers["Accept"] = accept

    response = stow_files(Client(headers=headers), [data])

    assert response.status_code == 200
    assert response["Content-Type"] == media_type
    assert "00081199" in response.json()


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/studies",
        f"{BASE}/series?Modality=CT",
        f"{BASE}/studies?accept=application/dicom%2Bxml",  # the query parameter decides
    ],
)
@pytest.mark.parametrize(
    "accept", ['multipart/related; type="application/dicom+xml"', "application/dicom+xml"]
)
def test_search_refuses_xml_with_a_406_rather_than_json_it_cannot_read(clinic, stored, url, accept):
    if "accept=" in url:
        accept = "*/*"

    response = _reader(clinic).get(url, HTTP_ACCEPT=accept)

    assert response.status_code == 406
    assert "DICOM XML" in response.json()["error"]


def test_a_search_406_is_the_same_for_a_study_of_ours_theirs_and_none(clinic, stored, theirs):
    xml = {"HTTP_ACCEPT": "application/dicom+xml"}
    answers = [
        _reader(clinic).get(f"{BASE}/studies/{uid}/series", **xml)
        for uid in (stored.StudyInstanceUID, theirs.StudyInstanceUID, "1.2.3.4")
    ]

    assert {a.status_code for a in answers} == {406}
    assert len({a.content for a in answers}) == 1
    assert not AuditEvent.objects.for_tenant(clinic).filter(action="dicomweb.search").exists()


def test_the_accept_query_parameter_chooses_the_rendered_type(clinic, stored):
    response = _reader(clinic).get(
        _instance(stored) + "/rendered?accept=image/png", HTTP_ACCEPT="*/*"
    )

    assert response.status_code == 200
    assert response.content.startswith(PNG)


def test_the_retrieve_part_type_is_matched_ignoring_case(clinic, stored):
    response = _reader(clinic).get(
        _instance(stored), HTTP_ACCEPT='multipart/related; type="Application/DICOM"'
    )

    assert response.status_code == 200
    assert b"DICM" in b"".join(response.streaming_content)


@pytest.mark.parametrize("suffix", ["", "/frames/1", "/bulkdata/7FE00010"])
def test_every_answer_chosen_by_accept_says_it_varies_by_accept(clinic, stored, suffix):
    response = _reader(clinic).get(_instance(stored) + suffix)

    assert response.status_code == 200
    assert "Accept" in response["Vary"]


@pytest.mark.parametrize(
    ("accept", "status"),
    [("application/dicom+xml", 406), ("application/dicom+json", 200), (None, 200)],
)
def test_a_store_answers_dicom_json_or_refuses_before_storing_anything(clinic, accept, status):
    from imaging.models import Instance

    headers = {"Authorization": f"Bearer {token_for(clinic, 'dicomweb:write')}"}
    if accept is not None:
        headers["Accept"] = accept

    response = stow_files(Client(headers=headers), synthetic_ct(slices=1, size=16))

    assert response.status_code == status
    assert Instance.objects.for_tenant(clinic).count() == (status == 200)
    if status == 406:
        assert "DICOM XML" in response.json()["error"]


@pytest.mark.parametrize(
    ("accept", "syntax"),
    [
        (None, "1.2.840.10008.1.2.1"),
        ("*/*", "1.2.840.10008.1.2.1"),
        ('multipart/related; type="application/dicom"', "1.2.840.10008.1.2.1"),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            "1.2.840.10008.1.2.4.50",
        ),
    ],
)
def test_a_retrieve_defaults_to_explicit_vr_little_endian_whatever_was_stored(
    clinic, accept, syntax
):
    from tests.imaging_tests.helpers import sample_bytes

    data = sample_bytes("SC_rgb_jpeg_dcmtk.dcm")  # stored as JPEG baseline
    ingest(clinic, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    response = _reader(clinic).get(_instance(ds), **({"HTTP_ACCEPT": accept} if accept else {}))

    body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert f"application/dicom; transfer-syntax={syntax}\r\n".encode() in body


# --- A bare * ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        ("", 'multipart/related; type="application/dicom"'),
        ("/frames/1", 'multipart/related; type="application/octet-stream"'),
        ("/bulkdata/7FE00010", 'multipart/related; type="application/octet-stream"'),
        ("/metadata", "application/dicom+json"),
        ("/rendered", "image/jpeg"),
    ],
)
@pytest.mark.parametrize("accept", ["*", "*;q=0.9"])
def test_a_bare_star_is_read_as_any_type_everywhere(clinic, stored, suffix, content_type, accept):
    """Old HTTP stacks (Java's among them) send `Accept: *` for `*/*`."""
    response = _reader(clinic).get(_instance(stored) + suffix, headers={"Accept": accept})

    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
