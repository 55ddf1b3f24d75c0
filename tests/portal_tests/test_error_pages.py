"""Error pages people meet: in the portal's layout, saying what happened and what to do."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.imaging_tests.helpers import ingest_study, synthetic_ct

pytestmark = pytest.mark.django_db


def test_a_form_with_an_outdated_csrf_token_gets_the_portals_page(clinic):
    client = Client(enforce_csrf_checks=True)

    response = client.post("/accounts/login/", {"username": "a@b.example", "password": "x"})

    body = response.content.decode()
    assert response.status_code == 403
    assert "This form has expired" in body and "reload the page" in body
    assert "portal.css" in body  # the portal's layout, not Django's bare page
    assert "DEBUG" not in body and "CSRF verification failed" not in body


def test_a_refusal_says_why_and_points_staff_to_their_administrator(
    client_for, technologist, clinic
):
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))

    response = client_for(technologist).get(f"/t/{clinic.slug}/studies/{study.pk}/download/")

    body = response.content.decode()
    assert response.status_code == 403
    assert "You may not download this study." in body
    assert "ask your clinic's administrator" in body


def _broken(*args, **kwargs):
    raise RuntimeError("Doe^Jane broke it")


def test_an_unexpected_error_on_the_partner_api_is_its_json_error_without_details(
    clinic, monkeypatch
):
    from tests.sharing_tests.test_share_api import token_for

    monkeypatch.setattr("imaging.api.views.token_studies", _broken)
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'studies:read')}",
        raise_request_exception=False,
    )

    response = client.get("/api/v1/studies")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "server_error" and "try again" in error["message"].lower()
    assert b"Doe^Jane" not in response.content and b"Traceback" not in response.content


def test_an_unexpected_error_on_dicomweb_is_its_json_error_without_details(clinic, monkeypatch):
    from tests.imaging_tests.dicomweb_support import token_for

    monkeypatch.setattr("imaging.dicomweb.views.qido.search_rows", _broken)
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}",
        raise_request_exception=False,
    )

    response = client.get("/dicomweb/studies")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert "try again" in response.json()["error"].lower()
    assert b"Doe^Jane" not in response.content
