"""REST API /api/v1/: token scopes, filters, pagination, one error format, isolation."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import Action, AuditEvent
from imaging.models import Study
from tests.helpers import within_one_minute
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct


def _api(token: str | None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(headers=headers)


@pytest.fixture
def studies(clinic):
    for index in range(3):
        (data,) = synthetic_ct(slices=1, patient_id=f"P-{index}", patient_name=f"Doe^N{index}")
        ingest(clinic, data)
    return list(Study.objects.for_tenant(clinic).order_by("created_at"))


@pytest.mark.django_db
def test_list_filter_paginate(clinic, studies):
    api = _api(token_for(clinic, "studies:read"))

    everything = api.get("/api/v1/studies").json()
    one = api.get("/api/v1/studies", {"patient_id": "P-1"}).json()
    page = api.get("/api/v1/studies", {"limit": 2, "offset": 2}).json()

    assert everything["count"] == 3
    assert [s["patient_id"] for s in one["results"]] == ["P-1"]
    assert len(page["results"]) == 1
    assert one["results"][0]["modalities"] == ["CT"]
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.API_READ).exists()


@pytest.mark.django_db
def test_detail_and_series(clinic, studies):
    api = _api(token_for(clinic, "studies:read"))

    detail = api.get(f"/api/v1/studies/{studies[0].pk}")
    series = api.get(f"/api/v1/studies/{studies[0].pk}/series")

    assert detail.json()["study_uid"] == studies[0].study_uid
    assert series.json()["results"][0]["num_instances"] == 1


@pytest.mark.django_db
def test_another_clinics_token_sees_nothing(clinic, other_clinic, studies):
    api = _api(token_for(other_clinic, "studies:read"))

    listing = api.get("/api/v1/studies").json()
    detail = api.get(f"/api/v1/studies/{studies[0].pk}")
    series = api.get(f"/api/v1/studies/{studies[0].pk}/series")
    missing = api.get("/api/v1/studies/00000000-0000-0000-0000-000000000000")

    assert listing["count"] == 0
    assert detail.status_code == series.status_code == missing.status_code == 404
    assert (
        detail.json() == missing.json() == {"error": {"code": "not_found", "message": "Not found."}}
    )


@pytest.mark.django_db
def test_scope_and_credential_errors(clinic, studies):
    wrong_scope = _api(token_for(clinic, "dicomweb:read")).get("/api/v1/studies")
    anonymous = _api(None).get("/api/v1/studies")
    bogus = _api("ptk_dead_beef").get("/api/v1/studies")

    assert wrong_scope.status_code == 403
    assert "studies:read" in wrong_scope.json()["error"]["message"]
    assert anonymous.status_code == 401
    assert bogus.status_code == 401
    assert bogus.json()["error"]["code"] == "authentication_failed"


@pytest.mark.django_db
def test_bad_filters_are_a_clear_400(clinic, studies):
    response = _api(token_for(clinic, "studies:read")).get(
        "/api/v1/studies", {"date_from": "yesterday"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["date_from"][0].startswith(
        "'yesterday' is not a date"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modality", "CT("),  # would be a broken regular expression in the database
        ("modality", "C\\T"),
        ("patient_id", "P-\x00"),  # PostgreSQL text holds no NUL
        ("patient_name", "x" * 65),
        ("study_uid", "1.2.\x00"),
    ],
)
def test_filter_values_the_database_cannot_take_are_a_clear_400(clinic, studies, field, value):
    response = _api(token_for(clinic, "studies:read")).get("/api/v1/studies", {field: value})

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


@pytest.mark.django_db
def test_partner_reads_name_the_studies_they_showed(clinic, studies):
    api = _api(token_for(clinic, "studies:read"))

    api.get("/api/v1/studies", {"limit": 2, "modality": "CT", "date_from": ""})
    api.get(f"/api/v1/studies/{studies[0].pk}")
    api.get(f"/api/v1/studies/{studies[1].pk}/series")

    listed, detail, series = (
        AuditEvent.objects.for_tenant(clinic).filter(action=Action.API_READ).order_by("seq")
    )
    newest_first = sorted(studies, key=lambda s: (s.study_date, s.created_at), reverse=True)
    assert listed.detail["studies"] == [str(s.pk) for s in newest_first[:2]]
    assert listed.detail["filters"] == ["modality"]  # which ones, never the values
    assert (detail.target_type, detail.target_id) == ("imaging.study", str(studies[0].pk))
    assert (series.target_type, series.target_id) == ("imaging.study", str(studies[1].pk))
    assert series.detail == {"resource": "series", "results": 1}


@pytest.mark.django_db
def test_openapi_schema_is_published(db):
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert "/api/v1/studies" in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"


@pytest.mark.django_db
def test_api_reference_page_lists_the_operations_without_script(db):
    response = Client().get("/api/docs/")

    assert response.status_code == 200
    assert b"GET /api/v1/studies" in response.content
    assert b"patient_id" in response.content
    assert b"<script" not in response.content


@pytest.mark.django_db
def test_requests_beyond_the_token_rate_limit_get_429(clinic, studies, settings, monkeypatch):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    within_one_minute(monkeypatch)
    api = _api(token_for(clinic, "studies:read"))

    responses = [api.get("/api/v1/studies") for _ in range(4)]
    other = _api(token_for(clinic, "studies:read")).get("/api/v1/studies")

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[-1]["Retry-After"] == "60"
    assert responses[-1].json()["error"]["code"] == "throttled"
    assert other.status_code == 200


@pytest.mark.django_db
def test_a_rate_limit_of_zero_turns_the_limit_off(clinic, studies, settings, monkeypatch):
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    within_one_minute(monkeypatch)
    api = _api(token_for(clinic, "studies:read"))

    assert {api.get("/api/v1/studies").status_code for _ in range(5)} == {200}


@pytest.mark.django_db
def test_a_token_refused_for_its_scope_is_refused_and_audited_within_its_budget(
    clinic, settings, monkeypatch
):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    within_one_minute(monkeypatch)
    api = _api(token_for(clinic, "dicomweb:read"))  # no studies:read

    statuses = [api.get("/api/v1/studies").status_code for _ in range(5)]
    dicomweb = api.post("/dicomweb/studies").status_code  # no dicomweb:write: same budget

    assert statuses == [403, 403, 403, 429, 429]
    assert dicomweb == 429
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.ACCESS_DENIED).count() == 3


@pytest.mark.django_db
def test_dicomweb_and_rest_share_one_budget_per_token(clinic, studies, settings, monkeypatch):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    within_one_minute(monkeypatch)
    token = token_for(clinic, "studies:read", "dicomweb:read")
    api = _api(token)

    dicomweb = [api.get("/dicomweb/studies").status_code for _ in range(3)]
    rest = api.get("/api/v1/studies")

    assert dicomweb == [200, 200, 200]
    assert rest.status_code == 429


@pytest.mark.django_db
def test_the_schema_declares_nullable_values_and_the_error_answers(db):
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    study = schema["components"]["schemas"]["Study"]["properties"]
    assert study["patient_birth_date"]["nullable"] is True
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    listing = schema["paths"]["/api/v1/studies"]["get"]["responses"]
    detail = schema["paths"]["/api/v1/studies/{id}"]["get"]["responses"]
    create = schema["paths"]["/api/v1/shares"]["post"]["responses"]
    assert {"400", "401", "403", "429", "500"} <= listing.keys() and "404" not in listing
    assert "404" in detail and "422" in create and "404" in create
    assert create["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
