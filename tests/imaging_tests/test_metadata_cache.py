"""WADO-RS metadata from the encrypted header kept on each instance row.

Ingest keeps each instance's header as DICOM JSON, sealed under the study key; metadata
requests read those rows instead of decrypting and parsing every stored object.
"""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from django.test import Client

from audit.models import Action, AuditEvent
from imaging.crypto import IntegrityError
from imaging.models import Instance
from imaging.storage import object_delete, storage_for
from tests.imaging_tests.dicomweb_support import http, series_metadata_url
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct

SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_RLE.dcm",
    "chrH31.dcm",
    "chrX1.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose_1frame.dcm",
]


@pytest.mark.django_db
@pytest.mark.parametrize("name", SAMPLES)
def test_metadata_from_the_row_matches_the_stored_file(name, clinic, read_token):
    data = sample_bytes(name)
    ingest(clinic, data)
    session = http(read_token)

    from_rows = session.get(series_metadata_url(data)).json()
    Instance.objects.for_tenant(clinic).update(metadata=b"")  # as rows stored before the cache
    from_files = session.get(series_metadata_url(data)).json()

    assert from_rows == from_files
    assert "7FE00010" in from_rows[0] and "InlineBinary" not in from_rows[0]["7FE00010"]


@pytest.mark.django_db
def test_metadata_needs_no_stored_object(clinic, read_token):
    files = synthetic_ct(slices=3, patient_name="Müller^Jürgen")
    for data in files:
        ingest(clinic, data)
    storage = storage_for(clinic)
    for key in Instance.objects.for_tenant(clinic).values_list("storage_key", flat=True):
        object_delete(storage, key)

    response = http(read_token).get(series_metadata_url(files[0]))

    assert response.status_code == 200
    names = {item["00100010"]["Value"][0]["Alphabetic"] for item in response.json()}
    assert names == {"Müller^Jürgen"}


@pytest.mark.django_db
def test_a_text_value_that_reads_like_nan_keeps_the_header_in_use(clinic, read_token):
    files = synthetic_ct(slices=1, tags={"StudyDescription": "CT head,NaN protocol"})
    ingest(clinic, files[0])
    storage = storage_for(clinic)
    for key in Instance.objects.for_tenant(clinic).values_list("storage_key", flat=True):
        object_delete(storage, key)  # the header on the row must do

    response = http(read_token).get(series_metadata_url(files[0]))

    assert response.status_code == 200
    assert response.json()[0]["00081030"]["Value"] == ["CT head,NaN protocol"]


@pytest.mark.django_db
def test_the_kept_header_is_encrypted(clinic):
    ingest(clinic, synthetic_ct(slices=1, patient_name="Plaintext^Findme", patient_id="PID-77")[0])

    sealed = bytes(Instance.objects.for_tenant(clinic).get().metadata)

    assert sealed.startswith(b"PIMG")
    assert b"Findme" not in sealed and b"PID-77" not in sealed


@pytest.mark.django_db
def test_a_header_moved_to_another_row_fails_its_check_and_is_audited(clinic, read_token):
    files = synthetic_ct(slices=2)
    for data in files:
        ingest(clinic, data)
    first, second = Instance.objects.for_tenant(clinic).order_by("instance_number")
    Instance.objects.for_tenant(clinic).filter(pk=first.pk).update(metadata=second.metadata)

    response = http(read_token).get(series_metadata_url(files[0]))

    assert response.status_code == 500
    assert "integrity check" in response.json()["error"]
    failed = AuditEvent.objects.filter(tenant=clinic, action=Action.INTEGRITY_FAILED)
    assert failed.filter(target_id=str(first.pk)).exists()


@pytest.mark.django_db
def test_backfill_keeps_headers_of_older_rows_and_skips_altered_objects(clinic, read_token):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    files = synthetic_ct(slices=3, patient_name="Older^Row")
    for data in files:
        ingest(clinic, data)
    Instance.objects.for_tenant(clinic).update(metadata=b"")  # as stored before the cache
    broken = Instance.objects.for_tenant(clinic).order_by("instance_number").first()
    object_delete(storage_for(clinic), broken.storage_key)
    out = io.StringIO()

    with pytest.raises(CommandError, match=f"could not be read in {clinic.slug};"):
        call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=out)

    assert f"{clinic.slug}: 2 instance headers kept, 1 unreadable\n" in out.getvalue()
    kept = Instance.objects.for_tenant(clinic).exclude(metadata=b"")
    assert kept.count() == 2 and not kept.filter(pk=broken.pk).exists()
    events = AuditEvent.objects.for_tenant(clinic)
    assert events.filter(action=Action.HEADERS_INDEXED, detail__instances=2).exists()
    assert events.filter(action=Action.INTEGRITY_FAILED, target_id=str(broken.pk)).exists()


def _study_metadata(client, files: list[bytes]):
    ds = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    return client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata")


@pytest.mark.django_db
def test_metadata_past_the_ahead_budget_streams_the_same_items_built_as_sent(
    clinic, read_token, monkeypatch
):
    from imaging.dicomweb.views import wado

    files = synthetic_ct(slices=4)
    for data in files:
        ingest(clinic, data)
    reader = Client(headers={"Authorization": f"Bearer {read_token}"})
    whole = _study_metadata(reader, files)
    monkeypatch.setattr(wado, "METADATA_AHEAD_BYTES", 0)
    opened = []
    real = wado.instance_header_json
    monkeypatch.setattr(wado, "instance_header_json", lambda **kw: opened.append(1) or real(**kw))

    streamed = _study_metadata(reader, files)
    opened_before_sending = len(opened)
    body = b"".join(streamed.streaming_content)

    assert not whole.streaming and whole.has_header("Content-Length")
    assert streamed.status_code == 200 and streamed.streaming
    assert streamed["Content-Type"] == "application/dicom+json"
    assert opened_before_sending == 1 and len(opened) == 4
    assert json.loads(body) == whole.json()


@pytest.mark.django_db
def test_a_header_failing_its_check_mid_answer_cuts_the_metadata_short(
    clinic, read_token, monkeypatch
):
    from imaging.dicomweb.views import wado

    files = synthetic_ct(slices=3)
    for data in files:
        ingest(clinic, data)
    reader = Client(headers={"Authorization": f"Bearer {read_token}"})
    first_sent = _study_metadata(reader, files).json()[0]["00080018"]["Value"][0]
    rows = Instance.objects.for_tenant(clinic)
    later = rows.exclude(sop_instance_uid=first_sent).order_by("pk")
    rows.filter(pk=later[0].pk).update(metadata=later[1].metadata)  # moved between rows
    monkeypatch.setattr(wado, "METADATA_AHEAD_BYTES", 0)

    response = _study_metadata(reader, files)
    received = bytearray()
    with pytest.raises(IntegrityError):
        for chunk in response.streaming_content:
            received += chunk

    assert response.status_code == 200
    assert received.startswith(b"[") and not received.endswith(b"]")
    failed = AuditEvent.objects.filter(tenant=clinic, action=Action.INTEGRITY_FAILED)
    assert failed.filter(target_id=str(later[0].pk)).exists()


def _unreadable_after(calls: int, monkeypatch) -> None:
    """Headers parse until the given number of calls; then pydicom fails, quoting a value."""
    from imaging.dicomweb.views import wado

    real, seen = pydicom.dcmread, []

    def dcmread(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise ValueError("invalid value 'Doe^Jane' in PatientName")
        return real(*args, **kwargs)

    monkeypatch.setattr(wado.pydicom, "dcmread", dcmread)


@pytest.mark.django_db
def test_a_header_that_cannot_be_read_is_a_clear_500_before_the_answer(
    clinic, read_token, monkeypatch, caplog
):
    files = synthetic_ct(slices=2)
    for data in files:
        ingest(clinic, data)
    Instance.objects.for_tenant(clinic).update(metadata=b"")  # as rows stored before the cache
    reader = Client(headers={"Authorization": f"Bearer {read_token}"})
    _unreadable_after(1, monkeypatch)

    response = _study_metadata(reader, files)

    assert response.status_code == 500
    assert (
        response.json()["error"]
        == "A stored instance's header could not be read; it was not served."
    )
    assert "ValueError" in caplog.text and "Doe" not in caplog.text
    unread = AuditEvent.objects.filter(tenant=clinic, action=Action.DICOMWEB_RETRIEVE).get()
    assert unread.outcome == "failure"
    assert unread.target_id in {
        str(pk) for pk in Instance.objects.for_tenant(clinic).values_list("pk", flat=True)
    }
    assert unread.detail == {"metadata": 1, "reason": "not_parsable"}


@pytest.mark.django_db
def test_a_header_that_cannot_be_read_mid_answer_cuts_the_metadata_short_and_is_audited(
    clinic, read_token, monkeypatch, caplog
):
    from imaging.dicomweb.views import wado

    files = synthetic_ct(slices=3)
    for data in files:
        ingest(clinic, data)
    Instance.objects.for_tenant(clinic).update(metadata=b"")
    reader = Client(headers={"Authorization": f"Bearer {read_token}"})
    monkeypatch.setattr(wado, "METADATA_AHEAD_BYTES", 0)
    _unreadable_after(2, monkeypatch)

    response = _study_metadata(reader, files)
    received = bytearray()
    with pytest.raises(wado.RetrieveCutShort):
        for chunk in response.streaming_content:
            received += chunk

    assert response.status_code == 200
    assert received.startswith(b"[") and not received.endswith(b"]")
    unserved = AuditEvent.objects.filter(tenant=clinic, action=Action.DICOMWEB_RETRIEVE).get(
        outcome="failure"
    )
    assert unserved.detail == {"metadata": 1, "reason": "not_parsable", "cut_short": True}
    assert "could not be read (ValueError)" in caplog.text and "Doe" not in caplog.text
