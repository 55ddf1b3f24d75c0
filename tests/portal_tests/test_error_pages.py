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
