"""QIDO-RS from statements compiled once per shape: the ORM's answers, each clinic its own."""

from __future__ import annotations

import io

import pydicom
import pytest

from imaging.dicomweb import search
from portal.statements import ShapeCache
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

pytestmark = pytest.mark.django_db


class OrmOnly(ShapeCache):
    """Never compiles: every search runs the ORM query, as before statements."""

    def _compile(self, build, values):
        return None


@pytest.fixture
def studies(clinic):
    """Three studies of ours: two patients, two dates, names with wildcard characters."""
    stored = []
    for patient_id, name, date in [
        ("PID-1", "Müller^Jürgen", "20250102"),
        ("PID-1", "Müller^Jürgen", "20250310"),
        ("PID_2", "O'Brien^100%", "20240601"),
    ]:
        files = synthetic_ct(
            slices=2, patient_name=name, patient_id=patient_id, tags={"StudyDate": date}
        )
        for data in files:
            ingest(clinic, data)
        stored.append(pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True))
    return stored


def _queries(studies) -> list[str]:
    first, _, third = studies
    return [
        "/studies?PatientID=PID-1",
        "/studies?PatientID=PID_2",
        "/studies?PatientID=PID%252",  # a literal %: matches nothing
        "/studies?PatientID=nobody",
        "/studies?PatientName=m%C3%BCller%5Ej%C3%BCrgen",  # case-insensitive exact
        "/studies?PatientName=O%27Brien*",
        "/studies?PatientName=*100%25&fuzzymatching=true",
        "/studies?StudyDate=20250101-20251231",
        "/studies?StudyDate=20240601",
        "/studies?StudyDate=-20241231&limit=1",
        f"/studies?StudyInstanceUID={first.StudyInstanceUID}%5C{third.StudyInstanceUID}",
        "/studies?ModalitiesInStudy=CT",
        "/studies?limit=2&offset=1",
        "/series?Modality=CT&PatientID=PID-1",
        f"/studies/{first.StudyInstanceUID}/series",
        f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances",
        f"/instances?SOPInstanceUID={first.SOPInstanceUID}",
        "/instances?InstanceNumber=2&PatientID=PID-1",
    ]


def _answers(monkeypatch, cache: ShapeCache, token: str, queries: list[str]) -> list:
    monkeypatch.setattr(search, "_CLINIC_WIDE", cache)
    session = http(token)
    answers = []
    for query in queries:
        response = session.get(BASE + query)
        answers.append((query, response.status_code, response.content))
    return answers


def test_searches_answer_as_the_orm_does(monkeypatch, clinic, studies):
    token = token_for(clinic, "dicomweb:read")
    queries = _queries(studies)

    orm = _answers(monkeypatch, OrmOnly(required=[0]), token, queries)
    compiled = _answers(monkeypatch, ShapeCache(required=[0]), token, queries)
    again = _answers(monkeypatch, search._CLINIC_WIDE, token, queries)  # now from the cache

    assert compiled == orm
    assert again == orm
    assert [status for _, status, _ in orm].count(200) >= 14  # most queries find something


def test_the_everyday_shapes_run_from_compiled_statements(monkeypatch, clinic, studies):
    first = studies[0]
    cache = ShapeCache(required=[0])
    monkeypatch.setattr(search, "_CLINIC_WIDE", cache)
    session = http(token_for(clinic, "dicomweb:read"))
    compiled_before = len([s for s in cache._statements.values() if s is not None])

    for query in [
        "/studies?PatientID=PID-1",
        "/studies?StudyDate=20250101-20251231",
        f"/studies?StudyInstanceUID={first.StudyInstanceUID}",
        f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances",
    ]:
        assert session.get(BASE + query).status_code == 200

    assert compiled_before == 0
    assert len([s for s in cache._statements.values() if s is not None]) == 4


def test_an_outsider_asking_the_same_shape_gets_only_its_own_studies(
    monkeypatch, clinic, other_clinic, studies
):
    theirs = synthetic_ct(slices=1, patient_name="Other^Patient", patient_id="PID-1")
    ingest(other_clinic, theirs[0])
    their_study = pydicom.dcmread(io.BytesIO(theirs[0])).StudyInstanceUID
    monkeypatch.setattr(search, "_CLINIC_WIDE", ShapeCache(required=[0]))
    ours, outsider = (
        http(token_for(clinic, "dicomweb:read")),
        http(token_for(other_clinic, "dicomweb:read")),
    )

    our_answer = ours.get(f"{BASE}/studies?PatientID=PID-1").json()
    their_answer = outsider.get(f"{BASE}/studies?PatientID=PID-1").json()
    not_theirs = outsider.get(f"{BASE}/studies?StudyInstanceUID={studies[0].StudyInstanceUID}")
    not_ours = ours.get(f"{BASE}/studies?StudyInstanceUID={their_study}")

    assert sorted(s["0020000D"]["Value"][0] for s in our_answer) == sorted(
        s.StudyInstanceUID for s in studies[:2]
    )
    assert [s["0020000D"]["Value"][0] for s in their_answer] == [their_study]
    assert not_theirs.status_code == not_ours.status_code == 204


def test_a_search_with_thousands_of_values_is_answered_not_an_error(clinic, studies):
    # Every value gets a placeholder of its type; a date's must stay a valid date even
    # after thousands of UIDs.
    uids = "%5C".join(f"1.2.3.{n}" for n in range(9000))
    session = http(token_for(clinic, "dicomweb:read"))

    response = session.get(f"{BASE}/studies?StudyInstanceUID={uids}&StudyDate=20250102")

    assert response.status_code == 204


def test_the_shapes_in_use_stay_compiled_when_odd_ones_flood_in(clinic, studies):
    from imaging.models import Study

    cache = ShapeCache(required=[0], size=2)

    def by(field):
        def build(values):
            scoped = Study.objects.unscoped(reason="test of the cache alone")
            return scoped.filter(tenant_id=values[0], **{field: values[1]}).values_list("pk")

        return build

    def ask(field, value):
        return cache.rows(shape=field, values=[clinic.pk, value], build=by(field))

    ask("study_uid", str(studies[0].StudyInstanceUID))
    ask("accession_number", "A-1")
    everyday = ask("study_uid", str(studies[1].StudyInstanceUID))  # in use again
    ask("description", "odd")  # a third shape: one must go

    assert len(everyday) == 1
    assert cache.compiled(shape="study_uid")
    assert cache.compiled(shape="description")
    assert not cache.compiled(shape="accession_number")
