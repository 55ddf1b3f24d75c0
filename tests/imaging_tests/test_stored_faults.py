"""A stored object pydicom or numpy fail on while it is processed for a read.

Ingest refuses the odd values it can find, but a decoder or a de-identification pass can
still fail in a shape nobody listed (a newer pydicom, an object stored by an older
portal). Such a read is a specific answer and a "not served" audit event after the
read's own, never a server error, and no log line quotes what the exception said.
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from audit.models import Action, AuditEvent
from audit.verify import chains_verify
from imaging.models import Study
from tests.imaging_tests.dicomweb_support import BASE, http, instance_url, token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct
from tests.sharing_tests.test_share_links import make_share, open_link

pytestmark = pytest.mark.django_db

FRAMES = 'multipart/related; type="application/octet-stream"'
EXPLICIT_LE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


def _fails(*args, **kwargs):
    raise ValueError("Doe^Jane 19700101")


@pytest.fixture
def stored(clinic):
    (data,) = synthetic_ct(slices=1, size=16, patient_name="Doe^Jane")
    ingest(clinic, data)
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _last_event(clinic) -> AuditEvent:
    return AuditEvent.objects.for_tenant(clinic).order_by("-seq").first()


@pytest.mark.parametrize(
    ("patched", "suffix", "accept", "read"),
    [
        ("imaging.dicomweb.views.images.frames_native_bytes", "/frames/1", FRAMES, "frames"),
        ("imaging.dicomweb.views.images.rendered_file", "/rendered", "image/jpeg", "rendered"),
        ("imaging.dicomweb.views.images.rendered_file", "/thumbnail", "image/png", "thumbnail"),
        (
            "imaging.dicomweb.views.images.bulk_data_bytes",
            "/bulkdata/7FE00010",
            FRAMES,
            "bulkdata",
        ),
    ],
    ids=["frames", "rendered", "thumbnail", "bulkdata"],
)
def test_a_pixel_read_failing_deep_in_a_library_is_a_406_audited_as_not_served(
    clinic, stored, monkeypatch, caplog, patched, suffix, accept, read
):
    monkeypatch.setattr(patched, _fails)

    response = http(token_for(clinic, "dicomweb:read")).get(
        instance_url(stored) + suffix, headers={"Accept": accept}
    )

    assert response.status_code == 406
    assert response.json()["error"] == "The stored object could not be read (ValueError)."
    unserved = _last_event(clinic)
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert unserved.detail["reason"] == "not_decodable" and read in unserved.detail
    assert "Doe^Jane" not in caplog.text and "ValueError" in caplog.text
    assert all(report.intact for report in chains_verify(tenant_slug=clinic.slug))


def test_a_retrieve_failing_to_re_encode_is_a_406_audited_as_not_served(
    clinic, monkeypatch, caplog
):
    (data,) = synthetic_ct(slices=1, size=16, patient_name="Doe^Jane")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = io.BytesIO()
    ds.save_as(implicit, implicit_vr=True, little_endian=True, enforce_file_format=True)
    ingest(clinic, implicit.getvalue())
    stored = ds
    monkeypatch.setattr("imaging.dicomweb.views.wado._transcode", _fails)

    response = http(token_for(clinic, "dicomweb:read")).get(
        f"{BASE}/studies/{stored.StudyInstanceUID}", headers={"Accept": EXPLICIT_LE}
    )

    assert response.status_code == 406
    assert stored.SOPInstanceUID in response.json()["error"]
    assert "transfer-syntax=*" in response.json()["error"]
    unserved = _last_event(clinic)
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert unserved.detail == {"instances": 1, "reason": "not_decodable"}
    assert "Doe^Jane" not in caplog.text


def test_a_deidentified_retrieve_failing_is_a_406_and_sends_nothing(
    client, clinic, radiologist, stored, monkeypatch, caplog
):
    study = Study.objects.for_tenant(clinic).get()
    _, token = make_share(study, radiologist, deidentify=True, allow_download=True)
    open_link(client, token)
    monkeypatch.setattr("imaging.dicomweb.views.wado.deidentified_bytes", _fails)

    response = client.get(f"/s/dicomweb/studies/{stored.StudyInstanceUID}")

    assert response.status_code == 406
    assert "de-identified" in response.json()["error"]
    assert "ask the clinic" in response.json()["error"]
    unserved = _last_event(clinic)
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert "Doe^Jane" not in caplog.text
