"""The privacy officer's audit log: who saw a study, what a member did, in full."""

from __future__ import annotations

import pytest

from audit import record
from audit.actors import Actor
from audit.models import Action, ActorType, AuditEvent
from imaging.models import Series
from tests.helpers import make_member
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_studies(clinic):
    return [
        ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name=name, patient_id=pid))
        for name, pid in (("Doe^Jane", "PID-1"), ("Roe^John", "PID-2"))
    ]


def _shown(response) -> list[AuditEvent]:
    assert response.status_code == 200, response.content
    return [row["event"] for row in response.context["rows"]]


def test_a_studys_events_include_the_searches_and_pages_that_showed_it(
    client_for, privacy_officer, radiologist, two_studies, clinic
):
    jane, john = two_studies
    client_for(radiologist).get(f"/t/{clinic.slug}/")  # the worklist lists both
    http(token_for(clinic, "dicomweb:read")).get(f"{BASE}/studies?PatientID=PID-2")  # John only
    client_for(radiologist).get(f"/t/{clinic.slug}/studies/{jane.pk}/")  # Jane's page

    about_jane = _shown(client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/?study={jane.pk}"))
    by_uid = _shown(
        client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/?study={jane.study_uid}")
    )

    actions = [e.action for e in about_jane]
    assert Action.STUDY_VIEWED in actions and Action.WORKLIST_VIEWED in actions
    assert Action.DICOMWEB_SEARCH not in actions  # the search showed John, not Jane
    # The same, by UID; and the officer's first look is now among them (named by id).
    assert by_uid[0].action == Action.AUDIT_VIEWED
    assert by_uid[0].detail["filters"] == {"study": str(jane.pk)}
    assert [e.pk for e in by_uid[1:]] == [e.pk for e in about_jane]
    assert all(str(john.pk) not in (e.target_id or "") for e in about_jane)


def test_a_series_view_counts_as_its_studys(client_for, privacy_officer, clinic, two_studies):
    jane, _ = two_studies
    series = Series.objects.for_tenant(clinic).get(study=jane)
    record(
        actor=Actor(type=ActorType.SYSTEM, id="test"),
        action=Action.SERIES_VIEWED,
        target=series,
        tenant=clinic,
        detail={},
    )

    shown = _shown(client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/?study={jane.pk}"))

    assert any(e.target_id == str(series.pk) for e in shown)


def test_events_are_filtered_by_member_action_and_outcome_and_shown_in_full(
    client_for, privacy_officer, radiologist, technologist, clinic, two_studies
):
    client_for(radiologist).get(f"/t/{clinic.slug}/")
    client_for(technologist).get(f"/t/{clinic.slug}/")
    officer = client_for(privacy_officer)

    response = officer.get(
        f"/t/{clinic.slug}/audit/",
        {"actor": f"user:{radiologist.pk}", "action": Action.WORKLIST_VIEWED, "outcome": "success"},
    )

    shown = _shown(response)
    assert len(shown) == 1 and shown[0].actor_id == str(radiologist.pk)
    body = response.content.decode()
    assert str(radiologist.pk) in body  # whole ids, not cut to 14 characters
    assert str(two_studies[0].pk) in body  # the detail: which studies the page listed
    assert radiologist.email in body  # who, by name
    # Reading the log is audited with what it was narrowed to (ids and kinds only).
    read = AuditEvent.objects.for_tenant(clinic).filter(action=Action.AUDIT_VIEWED).last()
    assert read.detail["filters"] == {
        "actor": f"user:{radiologist.pk}",
        "action": Action.WORKLIST_VIEWED,
        "outcome": "success",
    }


def test_the_member_list_offers_staff_and_tokens_not_patients(client_for, privacy_officer, clinic):
    make_member(clinic, "patient", email="jane.patient@example.org")
    token_for(clinic, "dicomweb:read")

    body = client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/").content.decode()

    assert privacy_officer.email in body and "API token" in body
    assert "jane.patient@example.org" not in body


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"study": "not a uid"}, "Study Instance UID"),
        ({"study": "1.2.3.4"}, "No study with this Study Instance UID in this clinic."),
        ({"actor": "nobody"}, "Choose who from the list."),
        ({"date_from": "2026-02-01", "date_to": "2026-01-01"}, "start date is after"),
        ({"action": "made.up"}, "Select a valid choice"),
    ],
)
def test_a_bad_filter_is_a_clear_400(client_for, privacy_officer, clinic, params, message):
    response = client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/", params)

    assert response.status_code == 400
    assert message in response.content.decode()
    # Not the whole log under the error, as if the filters had found it.
    assert response.context["rows"] == []
    assert "Correct the filters above to list events." in response.content.decode()


def test_another_clinics_study_finds_nothing_here(
    client_for, privacy_officer, clinic, other_clinic
):
    theirs = ingest_study(other_clinic, synthetic_ct(slices=1, size=16))

    by_id = client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/?study={theirs.pk}")
    by_uid = client_for(privacy_officer).get(f"/t/{clinic.slug}/audit/?study={theirs.study_uid}")

    assert _shown(by_id) == []
    assert by_uid.status_code == 400  # as a UID this clinic never stored


def test_only_privacy_officers_read_the_log(
    client_for, radiologist, other_tenant_all_roles, clinic
):
    assert client_for(radiologist).get(f"/t/{clinic.slug}/audit/").status_code == 403
    assert client_for(other_tenant_all_roles).get(f"/t/{clinic.slug}/audit/").status_code == 404
