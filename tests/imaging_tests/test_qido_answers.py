"""What a QIDO-RS answer records and says: the studies it showed, and when it was cut."""

from __future__ import annotations

import io

import pydicom
import pytest

from audit.models import Action, AuditEvent
from imaging.dicomweb import query
from imaging.models import Study
from tests.imaging_tests.dicomweb_support import BASE, http
from tests.imaging_tests.helpers import ingest, synthetic_ct

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_studies(clinic):
    """Three one-slice studies of one patient, in StudyDate order (newest first)."""
    uids = []
    for date in ["20250303", "20250202", "20250101"]:
        files = synthetic_ct(slices=2, patient_id="PID-9", tags={"StudyDate": date})
        for data in files:
            ingest(clinic, data)
        uids.append(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    return uids


def _study_ids(clinic, uids: list[str]) -> list[str]:
    studies = Study.objects.for_tenant(clinic).filter(study_uid__in=uids)
    by_uid = dict(studies.values_list("study_uid", "pk"))
    return [str(by_uid[uid]) for uid in uids]


def _last_search(clinic) -> AuditEvent:
    return (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.DICOMWEB_SEARCH)
        .order_by("-seq")
        .first()
    )


def test_a_search_records_which_studies_it_showed(clinic, read_token, three_studies):
    response = http(read_token).get(f"{BASE}/studies?PatientID=PID-9&limit=2")

    detail = _last_search(clinic).detail
    assert response.status_code == 200
    assert detail["results"] == 2
    assert detail["studies"] == _study_ids(clinic, three_studies[:2])
    assert detail["keys"] == ["PatientID"]  # what was matched on, never the value
    assert "PID-9" not in str(detail)


def test_a_series_or_instance_search_records_each_study_once(clinic, read_token, three_studies):
    session = http(read_token)

    series = session.get(f"{BASE}/series?PatientID=PID-9")
    series_detail = _last_search(clinic).detail
    instances = session.get(f"{BASE}/studies/{three_studies[1]}/instances")
    instances_detail = _last_search(clinic).detail

    assert series.status_code == instances.status_code == 200
    assert series_detail["results"] == 3
    assert sorted(series_detail["studies"]) == sorted(_study_ids(clinic, three_studies))
    assert instances_detail["results"] == 2
    assert instances_detail["studies"] == _study_ids(clinic, three_studies[1:2])


def test_a_search_without_matches_records_no_studies(clinic, read_token, other_clinic):
    for data in synthetic_ct(slices=1, patient_id="PID-9"):
        ingest(other_clinic, data)

    response = http(read_token).get(f"{BASE}/studies?PatientID=PID-9")

    assert response.status_code == 204
    assert _last_search(clinic).detail["studies"] == []


def test_an_answer_cut_at_the_servers_limit_says_so(clinic, read_token, three_studies, monkeypatch):
    monkeypatch.setattr(query, "DEFAULT_LIMIT", 2)

    response = http(read_token).get(f"{BASE}/studies?PatientID=PID-9")

    assert response.status_code == 200
    assert len(response.json()) == 2
    assert response.headers["Warning"].startswith("299 ")
    assert "Additional results can be requested" in response.headers["Warning"]


def test_a_limit_above_the_maximum_is_cut_there_with_the_warning(
    clinic, read_token, three_studies, monkeypatch
):
    monkeypatch.setattr(query, "MAX_LIMIT", 2)

    response = http(read_token).get(f"{BASE}/studies?PatientID=PID-9&limit=50")

    assert len(response.json()) == 2
    assert "Warning" in response.headers


@pytest.mark.parametrize(
    ("params", "count"),
    [
        ("limit=2", 2),  # the client's own limit: it knows
        ("", 3),  # every match fits under the server's limit
        ("offset=1", 2),
    ],
)
def test_an_answer_not_cut_by_the_server_has_no_warning(
    clinic, read_token, three_studies, monkeypatch, params, count
):
    monkeypatch.setattr(query, "DEFAULT_LIMIT", 3)

    response = http(read_token).get(f"{BASE}/studies?PatientID=PID-9&{params}")

    assert len(response.json()) == count
    assert "Warning" not in response.headers


def test_the_next_page_follows_a_cut_answer_without_repeats(
    clinic, read_token, three_studies, monkeypatch
):
    monkeypatch.setattr(query, "DEFAULT_LIMIT", 2)
    session = http(read_token)

    first = session.get(f"{BASE}/studies?PatientID=PID-9")
    rest = session.get(f"{BASE}/studies?PatientID=PID-9&offset=2")

    uids = [r["0020000D"]["Value"][0] for r in first.json() + rest.json()]
    assert uids == three_studies
    assert "Warning" not in rest.headers


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_every_result_says_its_instances_are_online_in_tag_order(
    clinic, read_token, three_studies, level
):
    results = http(read_token).get(f"{BASE}/{level}").json()

    assert results
    for result in results:
        assert result["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
        assert list(result) == sorted(result)
