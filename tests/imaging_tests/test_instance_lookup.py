"""The instance a frame is read from, found by its UIDs within one clinic."""

from __future__ import annotations

import io

import pydicom
import pytest

from imaging.models import Instance
from imaging.selectors import instance_by_uids
from tests.imaging_tests.helpers import ingest, synthetic_ct


def _uids(data: bytes) -> dict[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {
        "study_uid": ds.StudyInstanceUID,
        "series_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
    }


@pytest.fixture
def stored(clinic):
    files = synthetic_ct(slices=2, patient_id="LOOKUP-1")
    for data in files:
        ingest(clinic, data)
    return files


@pytest.mark.django_db
def test_the_instance_found_is_the_stored_row_with_its_study_and_series(clinic, stored):
    uids = _uids(stored[1])

    found = instance_by_uids(tenant=clinic, **uids)

    expected = (
        Instance.objects.for_tenant(clinic)
        .select_related("study", "series")
        .get(sop_instance_uid=uids["sop_instance_uid"])
    )
    for field in Instance._meta.concrete_fields:
        if field.name != "metadata":  # deferred: only metadata reads open it
            assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
    for related in ("study", "series"):
        got, want = getattr(found, related), getattr(expected, related)
        for field in type(want)._meta.concrete_fields:
            assert getattr(got, field.attname) == getattr(want, field.attname), field.name
    assert found.tenant == found.study.tenant == found.series.tenant == clinic
    assert "metadata" in found.get_deferred_fields()
    assert bytes(found.metadata) == bytes(expected.metadata)  # loads when asked


@pytest.mark.django_db
def test_uids_that_do_not_belong_together_find_nothing(clinic, stored):
    first, second = _uids(stored[0]), _uids(stored[1])
    another_study = synthetic_ct(slices=1, patient_id="LOOKUP-2")[0]
    ingest(clinic, another_study)
    other = _uids(another_study)

    assert instance_by_uids(tenant=clinic, **{**first, "study_uid": other["study_uid"]}) is None
    assert instance_by_uids(tenant=clinic, **{**first, "series_uid": "1.2.3"}) is None
    assert instance_by_uids(tenant=clinic, **{**first, "sop_instance_uid": "1.2.3"}) is None
    assert instance_by_uids(tenant=clinic, **second).sop_instance_uid == second["sop_instance_uid"]


@pytest.mark.django_db
def test_another_clinics_instance_is_not_found(clinic, other_clinic, stored):
    assert instance_by_uids(tenant=other_clinic, **_uids(stored[0])) is None
