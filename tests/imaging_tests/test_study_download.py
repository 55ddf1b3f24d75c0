"""Study downloads read objects a few ahead of the zip entry being sent, each verified whole."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pydicom
import pytest

from audit.models import Action, AuditEvent
from imaging.archive import study_zip
from imaging.crypto import IntegrityError
from imaging.models import Instance
from imaging.selectors import instances_for_download
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import (
    flip_a_stored_byte,
    ingest,
    read_until_integrity_failure,
    synthetic_ct,
)


@pytest.fixture
def study(clinic):
    """Two series of four slices each, one study."""
    first = synthetic_ct(slices=4, size=48)
    study_uid = pydicom_study_uid(first[0])
    second = synthetic_ct(slices=4, size=48, study_uid=study_uid, tags={"SeriesNumber": 2})
    for data in first + second:
        ingest(clinic, data)
    return Instance.objects.for_tenant(clinic).select_related("study").first().study


def pydicom_study_uid(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID


def _download(client, study):
    return client.get(f"/t/{study.tenant.slug}/studies/{study.pk}/download/")


@pytest.mark.django_db
def test_each_entry_holds_the_instance_its_name_says(read_ahead, client_for, radiologist, study):
    response = _download(client_for(radiologist), study)
    body = b"".join(response.streaming_content)

    assert int(response["Content-Length"]) == len(body)
    archive = zipfile.ZipFile(io.BytesIO(body))
    rows = {i.pk.hex[:8]: i.sha256 for i in Instance.objects.for_tenant(study.tenant)}
    names = [n for n in archive.namelist() if n.endswith(".dcm")]
    assert len(names) == 8
    for name in names:
        assert hashlib.sha256(archive.read(name)).hexdigest() == rows[name[-12:-4]]


@pytest.mark.django_db
def test_an_altered_object_stops_the_zip_before_its_bytes_and_is_audited(
    client_for, radiologist, study, data_dir
):
    instances = list(Instance.objects.for_tenant(study.tenant).order_by("series__series_number"))
    altered = instances[5]
    flip_a_stored_byte(data_dir, altered.storage_key)

    received, failure = read_until_integrity_failure(_download(client_for(radiologist), study))

    assert isinstance(failure, IntegrityError)
    # The body ends with the altered entry's header: not a byte of the object was sent.
    assert received.endswith(f"-{altered.pk.hex[:8]}.dcm".encode())
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.INTEGRITY_FAILED)
    assert event.target_id == str(altered.pk)


def _deidentified_zip(study) -> bytes:
    archive = study_zip(
        study=study,
        instances=instances_for_download(study=study),
        actor=TEST_ACTOR,
        pseudonym="ANON-7",
    )
    return b"".join(archive)


@pytest.mark.django_db
def test_deidentified_entries_are_read_ahead_and_each_is_its_own_instance(read_ahead, study):
    body = _deidentified_zip(study)

    archive = zipfile.ZipFile(io.BytesIO(body))
    rows = {i.pk.hex[:8]: i.sop_instance_uid for i in Instance.objects.for_tenant(study.tenant)}
    names = [n for n in archive.namelist() if n.endswith(".dcm")]
    assert len(names) == 8
    for name in names:
        ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
        assert ds.PatientID == "ANON-7" and str(ds.PatientName) == "ANONYMOUS"
        # De-identification keeps the instance's UID, so a reader can tell entries apart.
        assert ds.SOPInstanceUID == rows[name[-12:-4]]


@pytest.mark.django_db
def test_an_altered_object_stops_a_deidentified_zip_and_is_audited(study, data_dir):
    instances = instances_for_download(study=study)
    altered = instances[5]
    flip_a_stored_byte(data_dir, altered.storage_key)
    received = bytearray()

    with pytest.raises(IntegrityError):
        for chunk in study_zip(
            study=study, instances=instances, actor=TEST_ACTOR, pseudonym="ANON-7"
        ):
            received += chunk

    # The body ends with the altered entry's header (its name, then the zip64 field an
    # entry of unknown size carries): not a byte of the object was sent.
    _, name, after = bytes(received).rpartition(f"-{altered.pk.hex[:8]}.dcm".encode())
    assert name and len(after) == 20 and after[:2] == b"\x01\x00"
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.INTEGRITY_FAILED)
    assert event.target_id == str(altered.pk)


@pytest.mark.django_db
def test_outsider_downloading_the_study_gets_404(client_for, other_tenant_admin, study):
    response = client_for(other_tenant_admin).get(
        f"/t/{study.tenant.slug}/studies/{study.pk}/download/"
    )

    assert response.status_code == 404


def test_the_download_button_is_a_plain_link_so_a_second_factor_prompt_shows(
    client_for, radiologist, study
):
    """A `download` attribute would make the browser save the step-up page as the file
    when the second factor is due; the zip's Content-Disposition downloads it anyway."""
    page = client_for(radiologist).get(f"/t/{study.tenant.slug}/studies/{study.pk}/")

    html = page.content.decode()
    link = html[html.index(f"/studies/{study.pk}/download/") :].split(">", 1)[0]
    assert "Download zip" in html and "download" not in link.split('"', 1)[1]
