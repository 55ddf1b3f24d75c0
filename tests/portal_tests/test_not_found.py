"""A path no route matches answers in the interface's own form: JSON on the API and
DICOMweb, as a missing object does there, and the page elsewhere."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.utils import timezone

from tenants.tokens import api_token_create
from tests.helpers import TEST_ACTOR

pytestmark = pytest.mark.django_db


def _client(clinic, *scopes: str) -> Client:
    _, raw = api_token_create(
        tenant=clinic, name="partner", scopes=list(scopes), actor=TEST_ACTOR, now=timezone.now()
    )
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


def test_an_api_path_no_route_matches_is_the_apis_json_404(clinic):
    api = _client(clinic, "shares:write", "dicomweb:read")
    missing = api.delete(f"/api/v1/shares/{uuid.uuid4()}")

    answers = [
        api.delete(f"/api/v1/shares/{str(uuid.uuid4()).upper()}"),  # not canonical
        api.get("/api/v1/no-such-resource"),
    ]

    assert missing.status_code == 404
    for answer in answers:
        assert answer.status_code == 404
        assert answer["Content-Type"] == "application/json"
        assert (
            answer.json()
            == missing.json()
            == {"error": {"code": "not_found", "message": "Not found."}}
        )


def test_a_dicomweb_path_no_route_matches_is_a_json_404(clinic):
    reader = _client(clinic, "dicomweb:read")

    answers = [reader.get("/dicomweb/no-such-resource"), Client().get("/s/dicomweb/nothing")]

    for answer in answers:
        assert answer.status_code == 404
        assert answer.json() == {"error": "Not found."}


def test_a_page_path_no_route_matches_is_the_404_page(clinic, radiologist, client_for):
    answer = client_for(radiologist).get("/t/north/no-such-page/")

    assert answer.status_code == 404
    assert answer["Content-Type"].startswith("text/html")
