"""Refusals are on the clinic's audit log: who tried what, on which study, and why."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import Action, ActorType, AuditEvent, Outcome
from tests.imaging_tests.dicomweb_support import BASE, http, token_for
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16))


def _denials(clinic) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.for_tenant(clinic).filter(action=Action.ACCESS_DENIED).order_by("seq")
    )


def test_a_member_refused_a_download_is_recorded_against_the_study(
    client_for, technologist, clinic, study
):
    response = client_for(technologist).get(f"/t/{clinic.slug}/studies/{study.pk}/download/")

    (denied,) = _denials(clinic)
    assert response.status_code == 403
    assert (denied.actor_type, denied.actor_id) == (ActorType.USER, str(technologist.pk))
    assert (denied.target_type, denied.target_id) == ("imaging.study", str(study.pk))
    assert denied.outcome == Outcome.DENIED
    assert denied.detail == {
        "route": "study_download",
        "method": "GET",
        "reason": "You may not download this study.",
    }


def test_a_role_without_images_refused_the_viewers_dicomweb_is_recorded(
    client_for, front_desk, clinic, study
):
    url = f"/t/{clinic.slug}/dicomweb/studies/{study.study_uid}/metadata"

    response = client_for(front_desk).get(url)

    (denied,) = _denials(clinic)
    assert response.status_code == 403
    assert denied.actor_id == str(front_desk.pk) and denied.target_id == str(study.pk)
    assert denied.detail["reason"] == "Your role in this clinic does not include images."


def test_a_token_without_the_scope_is_recorded_for_dicomweb_and_the_rest_api(clinic, study):
    token = token_for(clinic, "studies:read")

    dicomweb = http(token).get(f"{BASE}/studies/{study.study_uid}/metadata")
    rest = Client(HTTP_AUTHORIZATION=f"Bearer {token}").post(
        "/api/v1/shares", {}, "application/json"
    )

    first, second = _denials(clinic)
    assert dicomweb.status_code == 403 and rest.status_code == 403
    assert first.actor_type == second.actor_type == ActorType.API_TOKEN
    assert first.target_id == str(study.pk)
    assert first.detail["reason"] == "This token lacks the dicomweb:read scope."
    assert second.detail["reason"] == "This token lacks the shares:write scope."


def test_an_unknown_study_uid_is_recorded_as_asked_for(clinic):
    token = token_for(clinic, "studies:read")

    http(token).get(f"{BASE}/studies/1.2.3.999/metadata")

    (denied,) = _denials(clinic)
    assert denied.target_id == "" and denied.detail["study_uid"] == "1.2.3.999"


def test_an_outsider_leaves_nothing_in_this_clinics_log(client_for, other_tenant_all_roles, study):
    response = client_for(other_tenant_all_roles).get(
        f"/t/{study.tenant.slug}/studies/{study.pk}/download/"
    )

    assert response.status_code == 404
    assert _denials(study.tenant) == []


@pytest.mark.parametrize("uid", ["1.2%003", "1.2.%3Cscript%3E", "9" * 65])
def test_a_refusal_naming_a_malformed_uid_is_recorded_without_it(
    client_for, front_desk, clinic, uid
):
    token = token_for(clinic, "studies:read")

    partner = http(token).get(f"{BASE}/studies/{uid}/metadata")
    member = client_for(front_desk).get(f"/t/{clinic.slug}/dicomweb/studies/{uid}/metadata")

    assert partner.status_code == member.status_code == 403
    assert [d.detail.get("study_uid_invalid") for d in _denials(clinic)] == ["true", "true"]
    assert all("study_uid" not in d.detail for d in _denials(clinic))
