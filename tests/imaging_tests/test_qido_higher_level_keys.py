"""QIDO-RS matching on higher-level attributes (PS3.18 10.6.1.2, Table 10.6.1-5): series
over all studies by study and patient attributes, instances by study and series ones,
and only the levels a search's URL leaves open."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.test import Client

from audit.models import Action, AuditEvent
from imaging.models import Study
from imaging.services import study_set_confidential
from tenants.models import ApiToken
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

pytestmark = pytest.mark.django_db

BASE = "/dicomweb"
PATIENT_SEX, PATIENT_BIRTH_DATE = "00100040", "00100030"
SERIES_UID, SOP_UID, STUDY_UID = "0020000E", "00080018", "0020000D"


def _reader(tenant, *scopes: str) -> Client:
    token = token_for(tenant, "dicomweb:read", *scopes)
    return Client(headers={"Authorization": f"Bearer {token}"})


def _store(tenant, *, slices: int = 2, **kwargs) -> pydicom.Dataset:
    files = synthetic_ct(slices=slices, **kwargs)
    for data in files:
        ingest(tenant, data)
    return pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)


@pytest.fixture
def studies(clinic, other_clinic) -> dict[str, pydicom.Dataset]:
    """Ann has a CT knee and an MR brain, Bob a CT the same day as Ann's; the other
    clinic holds a patient with Ann's ID, sex, birth date, name and study date."""
    ann = {"patient_name": "Alpha^Ann", "patient_id": "PID-A"}
    ann_tags = {"PatientSex": "F", "PatientBirthDate": "19800215"}
    return {
        "ann_ct": _store(
            clinic,
            **ann,
            tags={
                **ann_tags,
                "StudyDate": "20250105",
                "StudyTime": "0930",
                "StudyDescription": "Knee left",
                "ReferringPhysicianName": "House^Gregory",
                "SeriesDescription": "Axial bone",
                "SeriesNumber": 2,
            },
        ),
        "ann_mr": _store(
            clinic,
            slices=3,
            **ann,
            tags={
                **ann_tags,
                "Modality": "MR",
                "StudyDate": "20250610",
                "StudyDescription": "Brain",
                "ReferringPhysicianName": "Cuddy^Lisa",
                "SeriesDescription": "T1 sagittal",
                "SeriesNumber": 5,
            },
        ),
        "bob_ct": _store(
            clinic,
            patient_name="Beta^Bob",
            patient_id="PID-B",
            tags={
                "PatientSex": "M",
                "StudyDate": "20250105",
                "StudyDescription": "Knee right",
                "ReferringPhysicianName": "House^Gregory",
                "SeriesDescription": "Axial soft",
            },
        ),
        "theirs": _store(
            other_clinic,
            **ann,
            tags={
                **ann_tags,
                "StudyDate": "20250105",
                "StudyDescription": "Knee left",
                "ReferringPhysicianName": "House^Gregory",
                "SeriesDescription": "Axial bone",
            },
        ),
    }


def _values(response, tag: str) -> set[str]:
    assert response.status_code == 200, response.content
    return {result[tag]["Value"][0] for result in response.json()}


def test_series_over_all_studies_match_on_patient_attributes(clinic, studies):
    reader = _reader(clinic)

    by_patient = reader.get(f"{BASE}/series", {"PatientID": "PID-A", "PatientSex": "F"})
    by_birth = reader.get(
        f"{BASE}/series", {"PatientBirthDate": "19800101-19801231", "Modality": "MR"}
    )

    assert _values(by_patient, SERIES_UID) == {
        studies["ann_ct"].SeriesInstanceUID,
        studies["ann_mr"].SeriesInstanceUID,
    }
    assert _values(by_patient, PATIENT_SEX) == {"F"}
    assert _values(by_birth, SERIES_UID) == {studies["ann_mr"].SeriesInstanceUID}


def test_series_match_a_wildcard_patient_name_with_study_attributes(clinic, studies):
    reader = _reader(clinic)

    response = reader.get(
        f"{BASE}/series",
        {"PatientName": "al*", "ReferringPhysicianName": "HOUSE^*", "StudyTime": "0900-1000"},
    )
    modalities = reader.get(f"{BASE}/series", {"ModalitiesInStudy": "MR"})
    described = reader.get(f"{BASE}/series", {"StudyDescription": "Knee*"})

    assert _values(response, SERIES_UID) == {studies["ann_ct"].SeriesInstanceUID}
    assert _values(modalities, SERIES_UID) == {studies["ann_mr"].SeriesInstanceUID}
    assert _values(described, SERIES_UID) == {
        studies["ann_ct"].SeriesInstanceUID,
        studies["bob_ct"].SeriesInstanceUID,
    }


def test_instances_over_all_studies_match_on_study_and_series_attributes(clinic, studies):
    reader = _reader(clinic)
    ann_ct, bob_ct = studies["ann_ct"], studies["bob_ct"]

    same_day_ct = reader.get(f"{BASE}/instances", {"Modality": "CT", "StudyDate": "20250105"})
    described = reader.get(
        f"{BASE}/instances",
        {"SeriesDescription": "Axial b*", "StudyDate": "20250101-20250131"},
    )
    listed = reader.get(
        f"{BASE}/instances",
        {
            "StudyInstanceUID": f"{ann_ct.StudyInstanceUID}\\{bob_ct.StudyInstanceUID}",
            "SeriesNumber": "2",
            "PatientBirthDate": "19800215",
            "includefield": "PatientBirthDate",
        },
    )

    assert _values(same_day_ct, STUDY_UID) == {ann_ct.StudyInstanceUID, bob_ct.StudyInstanceUID}
    assert len(same_day_ct.json()) == 4
    assert _values(described, SERIES_UID) == {ann_ct.SeriesInstanceUID}
    assert len(described.json()) == 2
    assert _values(listed, SERIES_UID) == {ann_ct.SeriesInstanceUID}
    assert _values(listed, PATIENT_BIRTH_DATE) == {"19800215"}


def test_instances_of_one_study_match_on_series_attributes(clinic, studies):
    mr = studies["ann_mr"]

    response = _reader(clinic).get(
        f"{BASE}/studies/{mr.StudyInstanceUID}/instances",
        {"Modality": "MR", "SeriesNumber": "5", "SeriesDescription": "T1*"},
    )
    none = _reader(clinic).get(
        f"{BASE}/studies/{mr.StudyInstanceUID}/instances", {"SeriesDescription": "Axial*"}
    )

    assert _values(response, SERIES_UID) == {mr.SeriesInstanceUID}
    assert len(response.json()) == 3
    assert none.status_code == 204


def test_another_clinics_matching_data_is_neither_returned_nor_audited(
    clinic, other_clinic, studies
):
    reader = _reader(clinic)
    ours = {
        str(pk)
        for pk in Study.objects.for_tenant(clinic)
        .filter(patient__patient_id="PID-A")
        .values_list("pk", flat=True)
    }

    series = reader.get(f"{BASE}/series", {"PatientID": "PID-A", "PatientSex": "F"})
    instances = reader.get(
        f"{BASE}/instances",
        {"PatientName": "Alpha^Ann", "SeriesDescription": "Axial bone", "StudyDate": "20250105"},
    )
    outsider = _reader(other_clinic).get(
        f"{BASE}/series", {"PatientID": "PID-A", "StudyDescription": "Knee*"}
    )

    theirs = studies["theirs"]
    assert theirs.SeriesInstanceUID not in _values(series, SERIES_UID)
    assert _values(instances, SERIES_UID) == {studies["ann_ct"].SeriesInstanceUID}
    assert _values(outsider, SERIES_UID) == {theirs.SeriesInstanceUID}
    searches = AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_SEARCH)
    first, second = searches.order_by("seq")
    assert set(first.detail["studies"]) == ours
    assert first.detail["level"] == "series"
    assert len(second.detail["studies"]) == 1
    assert set(second.detail["studies"]) <= ours


def test_a_confidential_study_matches_only_for_a_token_that_may_read_it(
    clinic, studies, radiologist
):
    study = Study.objects.for_tenant(clinic).get(study_uid=studies["ann_mr"].StudyInstanceUID)
    study_set_confidential(study=study, confidential=True, by=radiologist, actor=TEST_ACTOR)
    query = {"PatientID": "PID-A", "PatientBirthDate": "19800215"}

    plain = _reader(clinic).get(f"{BASE}/series", query)
    trusted = _reader(clinic, ApiToken.Scope.CONFIDENTIAL_READ).get(f"{BASE}/series", query)

    assert _values(plain, SERIES_UID) == {studies["ann_ct"].SeriesInstanceUID}
    assert studies["ann_mr"].SeriesInstanceUID in _values(trusted, SERIES_UID)


@pytest.mark.parametrize(
    ("path", "query", "message"),
    [
        ("/series", "SOPInstanceUID=1.2.3", "cannot be matched at the series level"),
        ("/series", "InstanceNumber=1", "cannot be matched at the series level"),
        ("/studies/{study}/series", "SOPInstanceUID=1.2.3", "at the series level"),
        ("/studies/{study}/series/{series}/instances", "ReferencedSOPClassUID=1.2", "Unknown"),
    ],
)
def test_a_key_not_valid_at_the_level_is_a_clear_400_whoever_holds_the_study(
    clinic, studies, path, query, message
):
    reader = _reader(clinic)
    before = AuditEvent.objects.for_tenant(clinic).count()

    answers = [
        reader.get(
            BASE + path.format(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID) + "?" + query
        )
        for ds in (studies["ann_ct"], studies["theirs"])
    ]

    assert {r.status_code for r in answers} == {400}
    assert len({r.content for r in answers}) == 1  # says nothing of whose study it is
    assert message in answers[0].json()["error"]
    assert AuditEvent.objects.for_tenant(clinic).count() == before


@pytest.mark.parametrize(
    ("path", "query", "found"),
    [
        ("/studies/{study}/series", "StudyInstanceUID={study}", True),
        ("/studies/{study}/series", "PatientID=PID-A", True),
        ("/studies/{study}/series", "PatientID=PID-B", False),
        ("/studies/{study}/instances", "PatientSex=F&Modality=CT", True),
        ("/studies/{study}/series/{series}/instances", "Modality=MR", False),
        ("/studies/{study}/series/{series}/instances", "PatientName=A*", True),
    ],
)
def test_keys_restating_the_url_s_study_or_series_filter_within_it(
    clinic, studies, path, query, found
):
    ds = studies["ann_ct"]
    url = BASE + path.format(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID)

    response = _reader(clinic).get(url + "?" + query.format(study=ds.StudyInstanceUID))

    assert response.status_code == (200 if found else 204)
    if found:
        assert _values(response, SERIES_UID) == {ds.SeriesInstanceUID}
