"""A study key that cannot be opened (altered, or its clinic key version gone): every
read answers a clear error and audits it; nothing is added to the study."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.test import Client

from audit.models import Action, AuditEvent
from imaging.ingest import IngestOutcome
from imaging.keyring import keyring_forget
from imaging.models import Instance, Study, TenantKey
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

SUFFIXES = ["", "/metadata", "/frames/1", "/rendered"]


@pytest.fixture
def reader(clinic):
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")


@pytest.fixture
def slices(clinic):
    data = synthetic_ct(slices=2)
    ingest(clinic, data[0])
    return data


def _url(data: bytes, suffix: str) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def _alter_study_key(clinic) -> None:
    study = Study.objects.for_tenant(clinic).get()
    wrapped = bytearray(study.wrapped_dek)
    wrapped[-1] ^= 1
    Study.objects.for_tenant(clinic).filter(pk=study.pk).update(wrapped_dek=bytes(wrapped))


def _remove_clinic_key(clinic) -> None:
    TenantKey.objects.for_tenant(clinic).delete()
    keyring_forget()  # another process, or this one restarted


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("damage", [_alter_study_key, _remove_clinic_key])
def test_a_read_under_a_key_that_cannot_be_opened_is_a_clear_audited_error(
    clinic, slices, reader, suffix, damage
):
    damage(clinic)

    response = reader.get(_url(slices[0], suffix), HTTP_ACCEPT="*/*")

    assert response.status_code == 500
    assert "integrity check" in response.json()["error"]
    failed = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert failed.target_id == str(Instance.objects.for_tenant(clinic).get().pk)


@pytest.mark.django_db
def test_nothing_is_added_to_a_study_whose_key_cannot_be_opened(clinic, slices):
    _alter_study_key(clinic)

    result = ingest(clinic, slices[1])

    assert result.outcome == IngestOutcome.REJECTED
    assert result.code == "study_key_unreadable"
    assert Instance.objects.for_tenant(clinic).count() == 1
