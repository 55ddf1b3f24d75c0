"""De-identified links leave out series whose pixels may show who the patient is.

De-identification cleans headers, not pixels: an ultrasound with the name burned in, a
screen capture or a scanned document would show the patient to an anonymous recipient.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pydicom
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from rest_framework.test import APIClient

from audit.models import Action, AuditEvent
from imaging.deidentify import pixels_may_identify
from imaging.models import Instance, Series, Study
from sharing.models import ShareLink
from tenants.tokens import api_token_create
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import ingest, ingest_study, sample_bytes, synthetic_ct
from tests.sharing_tests.test_share_links import make_share, open_link

CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


def header(sop_class: str, **tags: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("ds", "identifying"),
    [
        (header(CT), False),
        (header(CT, BurnedInAnnotation="YES"), True),
        (header(CT, BurnedInAnnotation="yes "), True),
        (header(CT, RecognizableVisualFeatures="YES"), True),
        (header(CT, BurnedInAnnotation="NO", RecognizableVisualFeatures="YES"), True),
        (header(CT, BurnedInAnnotation="MAYBE"), True),
        (header(SecondaryCaptureImageStorage), True),
        (header(SecondaryCaptureImageStorage, BurnedInAnnotation="NO"), False),
        (header(US), True),
        (header(PDF), True),
        (header(PHOTO), True),
        (header("1.2.840.10008.5.1.4.1.1.77"), False),  # a prefix, not a whole class
        (header("1.2.840.10008.5.1.4.1.1.71"), False),
        # Retired ultrasound and visible-light classes, which old devices still write.
        (header("1.2.840.10008.5.1.4.1.1.6"), True),
        (header("1.2.840.10008.5.1.4.1.1.3"), True),
        (header("1.2.840.10008.5.1.4.1.1.77.1"), True),
        (header("1.2.840.10008.5.1.4.1.1.77.2"), True),
        (header("1.2.840.10008.5.1.4.1.1.6", BurnedInAnnotation="NO"), False),
        # A photograph without text may still show a face.
        (header(PHOTO, BurnedInAnnotation="NO"), True),
        (header(PHOTO + ".1", BurnedInAnnotation="NO"), True),  # video
        (header(PHOTO, RecognizableVisualFeatures="NO"), True),  # text not ruled out
        (header(PHOTO, BurnedInAnnotation="NO", RecognizableVisualFeatures="NO"), False),
        (header(PHOTO, BurnedInAnnotation="YES", RecognizableVisualFeatures="NO"), True),
    ],
)
def test_which_pixels_may_identify_the_patient(ds, identifying):
    assert pixels_may_identify(ds) is identifying


def _secondary_capture(*, study_uid: str, patient_id: str, patient_name: str) -> bytes:
    """pydicom's screen capture, filed in the given study as series 3."""
    ds = pydicom.dcmread(io.BytesIO(sample_bytes("SC_rgb_rle.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.SeriesNumber = patient_id, patient_name, 3
    ds.Modality = "OT"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def study(clinic):
    """A CT series, a CT series marked as having burned-in text, and a screen capture."""
    study_uid = generate_uid()
    person = {"patient_name": "Doe^Jane", "patient_id": "MRN-4711"}
    plain = synthetic_ct(slices=2, size=16, study_uid=study_uid, **person)
    marked = synthetic_ct(
        slices=1,
        size=16,
        study_uid=study_uid,
        tags={"SeriesNumber": 2, "BurnedInAnnotation": "YES"},
        **person,
    )
    capture = _secondary_capture(study_uid=study_uid, **person)
    return ingest_study(clinic, [*plain, *marked, capture])


def series_numbered(study, number: int) -> Series:
    return Series.objects.for_tenant(study.tenant).get(study=study, series_number=number)


def test_ingest_records_whether_pixels_may_identify(study):
    flags = dict(
        Instance.objects.for_tenant(study.tenant)
        .filter(study=study)
        .values_list("series__series_number", "pixels_may_identify")
        .distinct()
    )

    assert flags == {1: False, 2: True, 3: True}


def test_the_recipient_of_a_deidentified_link_sees_only_clean_series_and_is_told(
    client, study, radiologist
):
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)

    page = client.get("/s/").content.decode()

    assert "Series 1 · CT" in page
    assert "Series 2" not in page.split("left out")[0] and "Series 3" not in page
    assert "2 series are left out of this anonymised copy: series 2 (CT), series 3 (OT)" in page
    assert "Synthetic CT" not in page  # descriptions go with the headers' de-identification


def test_deidentified_dicomweb_reads_of_withheld_series_are_not_found(client, study, radiologist):
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    base = f"/s/dicomweb/studies/{study.study_uid}"
    withheld = Instance.objects.for_tenant(study.tenant).get(series__series_number=3)
    instance = f"{base}/series/{withheld.series.series_uid}/instances/{withheld.sop_instance_uid}"

    answers = {
        "metadata": client.get(f"{base}/series/{withheld.series.series_uid}/metadata"),
        "series": client.get(f"{base}/series/{withheld.series.series_uid}"),
        "instance": client.get(instance),
        "frame": client.get(
            f"{instance}/frames/1", HTTP_ACCEPT='multipart/related; type="application/octet-stream"'
        ),
        "rendered": client.get(f"{instance}/rendered", HTTP_ACCEPT="image/png"),
        "thumbnail": client.get(
            f"{base}/series/{withheld.series.series_uid}/thumbnail", HTTP_ACCEPT="image/png"
        ),
    }
    study_metadata = client.get(f"{base}/metadata").json()

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 404)
    assert {item["0020000E"]["Value"][0] for item in study_metadata} == {
        series_numbered(study, 1).series_uid
    }


def test_a_deidentified_download_holds_only_the_clean_series(client, study, radiologist):
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)

    response = client.get("/s/download/")

    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    files = [n for n in archive.namelist() if n.endswith(".dcm")]
    assert len(files) == 2
    series = {pydicom.dcmread(io.BytesIO(archive.read(n))).SeriesNumber for n in files}
    assert series == {1}


def test_an_identified_link_shows_every_series(client, study, radiologist):
    _, token = make_share(study, radiologist, deidentify=False)
    open_link(client, token)

    page = client.get("/s/").content.decode()
    metadata = client.get(f"/s/dicomweb/studies/{study.study_uid}/metadata").json()

    assert "left out" not in page
    assert len(metadata) == 4


def test_chosen_series_that_are_withheld_are_named_and_others_not(client, study, radiologist):
    chosen = [series_numbered(study, 1), series_numbered(study, 2)]
    _, token = make_share(study, radiologist, deidentify=True, series=chosen)
    open_link(client, token)

    page = client.get("/s/").content.decode()

    assert "1 series is left out of this anonymised copy: series 2 (CT)." in page
    assert "series 3" not in page


def test_the_share_form_warns_which_series_a_deidentified_link_leaves_out(
    client_for, study, radiologist
):
    page = client_for(radiologist).get(f"/t/{study.tenant.slug}/studies/{study.pk}/share/")

    text = page.content.decode()
    assert "A de-identified link leaves out series 2 (CT), series 3 (OT)" in text


def test_the_creation_is_audited_with_the_series_withheld(study, radiologist):
    share, _ = make_share(study, radiologist, deidentify=True)

    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_CREATED)

    assert sorted(event.detail["withheld_series"]) == sorted(
        str(series_numbered(study, n).pk) for n in (2, 3)
    )
    assert event.detail["share"] == str(share.pk)


def test_the_partner_api_names_the_series_withheld(study, clinic):
    _, raw = api_token_create(
        tenant=clinic,
        name="RIS",
        scopes=["shares:write", "dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    created = api.post(
        "/api/v1/shares",
        {
            "study_instance_uid": study.study_uid,
            "expires_at": (timezone.now() + dt.timedelta(days=7)).isoformat(),
            "pin": "4711",
            "deidentify": True,
        },
        format="json",
    )

    assert created.status_code == 201, created.content
    assert sorted(created.json()["withheld_series_instance_uids"]) == sorted(
        series_numbered(study, n).series_uid for n in (2, 3)
    )


def test_the_partner_share_list_names_each_links_withheld_series_in_fixed_queries(study, clinic):
    token, raw = api_token_create(
        tenant=clinic,
        name="RIS",
        scopes=["shares:write", "dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def share(**options):
        return make_share(study, None, created_by_token=token, **options)[0]

    whole = share(deidentify=True)
    chosen = share(deidentify=True, series=[series_numbered(study, 1), series_numbered(study, 3)])
    clean = share(deidentify=True, series=[series_numbered(study, 1)])
    identified = share(deidentify=False)
    listed = api.get("/api/v1/shares")
    with CaptureQueriesContext(connection) as four:  # after the token's first-use update
        api.get("/api/v1/shares")
    for _ in range(6):
        share(deidentify=True, series=[series_numbered(study, 2)])

    with CaptureQueriesContext(connection) as ten:
        longer = api.get("/api/v1/shares")

    assert listed.status_code == 200, listed.content
    withheld = {row["id"]: row["withheld_series_instance_uids"] for row in listed.json()["results"]}
    uid = {n: series_numbered(study, n).series_uid for n in (2, 3)}
    assert withheld == {
        str(whole.pk): [uid[2], uid[3]],
        str(chosen.pk): [uid[3]],
        str(clean.pk): [],
        str(identified.pk): [],
    }
    assert len(longer.json()["results"]) == 10
    assert len(ten.captured_queries) == len(four.captured_queries)


def test_instances_not_assessed_are_withheld_until_the_backfill_assesses_them(
    client, clinic, radiologist
):
    study = ingest_study(clinic, synthetic_ct(slices=2, size=16, patient_name="Doe^Jane"))
    Instance.objects.for_tenant(clinic).filter(study=study).update(pixels_may_identify=None)
    _, token = make_share(study, radiologist, deidentify=True)
    open_link(client, token)
    before = client.get("/s/").content.decode()

    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())

    after = client.get("/s/").content.decode()
    assert "1 series is left out" in before and "Series 1 · CT" not in before
    assert "left out" not in after and "Series 1 · CT" in after
    assert not Instance.objects.for_tenant(clinic).filter(pixels_may_identify=None).exists()


def test_a_study_of_only_withheld_series_gives_the_recipient_nothing_to_open(
    client, clinic, radiologist
):
    ingest(
        clinic, _secondary_capture(study_uid=generate_uid(), patient_id="P-1", patient_name="X^Y")
    )
    study = Series.objects.for_tenant(clinic).get().study
    _, token = make_share(study, radiologist, deidentify=True)
    open_link(client, token)

    page = client.get("/s/").content.decode()

    assert "No series to show." in page and "Open viewer" not in page
    assert ShareLink.objects.for_tenant(clinic).count() == 1


def test_instances_of_classes_now_identifying_are_assessed_again_after_the_upgrade(clinic):
    import importlib

    from django.apps import apps

    upgrade = importlib.import_module("imaging.migrations.0010_reassess_pixels_may_identify")
    legacy_us = "1.2.840.10008.5.1.4.1.1.6"
    same = {"slices": 1, "size": 16, "study_uid": generate_uid()}
    study = ingest_study(
        clinic,
        [
            *synthetic_ct(**same, tags={"SOPClassUID": legacy_us, "SeriesNumber": 1}),
            *synthetic_ct(**same, tags={"SeriesNumber": 2}),
        ],
    )
    rows = Instance.objects.for_tenant(clinic).filter(study=study)
    rows.update(pixels_may_identify=False)  # as the earlier rule assessed both

    upgrade.forward(apps, None)
    between = dict(rows.values_list("series__series_number", "pixels_may_identify"))
    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())

    after = dict(rows.values_list("series__series_number", "pixels_may_identify"))
    assert between == {1: None, 2: False}
    assert after == {1: True, 2: False}


# --- Text inside a compressed bitstream ---------------------------------------------------

SECRET = b"Doe^Jane MRN-4711"


def _jpeg_ct_with_a_comment() -> tuple[bytes, pydicom.Dataset]:
    """A CT stored as JPEG baseline whose bitstream carries the patient's name in a
    comment segment, which de-identifying the header never sees."""
    import numpy as np
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    picture = io.BytesIO()
    pixels = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    Image.fromarray(pixels, mode="L").save(picture, format="JPEG", comment=SECRET)
    assert SECRET in picture.getvalue()
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesNumber = "Doe^Jane", "MRN-4711", "CT", 1
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = encapsulate([picture.getvalue()])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds


@pytest.fixture
def jpeg_link(client, clinic, radiologist):
    data, ds = _jpeg_ct_with_a_comment()
    ingest(clinic, data)
    study = Study.objects.for_tenant(clinic).get(study_uid=ds.StudyInstanceUID)
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    return ds


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", 'multipart/related; type="application/dicom"; transfer-syntax=*'],
)
def test_a_deidentified_object_goes_out_decoded_without_its_bitstreams_text(
    client, jpeg_link, accept
):
    ds = jpeg_link
    url = (
        f"/s/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )

    response = client.get(url, **({"HTTP_ACCEPT": accept} if accept else {}))

    body = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert SECRET not in body and b"MRN-4711" not in body
    assert b"transfer-syntax=1.2.840.10008.1.2.1\r\n" in body


def test_a_deidentified_object_is_not_sent_in_its_compressed_syntax(client, jpeg_link):
    ds = jpeg_link

    response = client.get(
        f"/s/dicomweb/studies/{ds.StudyInstanceUID}",
        HTTP_ACCEPT='multipart/related; type="application/dicom"; '
        "transfer-syntax=1.2.840.10008.1.2.4.50",
    )

    assert response.status_code == 406
    assert "sent with their images decoded" in response.json()["error"]


def test_a_deidentified_download_decodes_compressed_images(client, jpeg_link):
    response = client.get("/s/download/")

    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    (name,) = [n for n in archive.namelist() if n.endswith(".dcm")]
    data = archive.read(name)
    assert SECRET not in data
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
