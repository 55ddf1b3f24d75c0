"""Partners' token channels (/dicomweb/, /api/v1/) leave the browser session alone."""

from __future__ import annotations

import pytest
from django.conf import settings

from tenants.sessions import LAST_SEEN_AT
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, synthetic_ct

TOKEN_REQUESTS = [
    ("/dicomweb/studies", "application/dicom+json"),
    ("/api/v1/studies", "application/json"),
]


@pytest.fixture
def token(clinic):
    ingest(clinic, synthetic_ct(slices=1)[0])
    return token_for(clinic, "dicomweb:read", "studies:read")


def _vary(response) -> set[str]:
    return {v.strip().lower() for v in response.get("Vary", "").split(",") if v.strip()}


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "accept"), TOKEN_REQUESTS)
def test_token_answers_do_not_vary_by_cookie(path, accept, client, token):
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert "cookie" not in _vary(response)
    assert settings.SESSION_COOKIE_NAME not in response.cookies


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "accept"), TOKEN_REQUESTS)
def test_a_staff_cookie_riding_along_is_neither_kept_alive_nor_answered(
    path, accept, radiologist, client_for, token
):
    browser = client_for(radiologist)
    session = browser.session
    session[LAST_SEEN_AT] -= 600
    session.save()
    last_seen = session[LAST_SEEN_AT]

    response = browser.get(path, HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_ACCEPT=accept)

    assert response.status_code == 200
    assert browser.session[LAST_SEEN_AT] == last_seen
    assert settings.SESSION_COOKIE_NAME not in response.cookies
    assert "cookie" not in _vary(response)


@pytest.mark.django_db
def test_the_viewer_channel_still_runs_on_the_session(radiologist, client_for, token):
    browser = client_for(radiologist)
    session = browser.session
    session[LAST_SEEN_AT] -= 600
    session.save()
    last_seen = session[LAST_SEEN_AT]

    response = browser.get("/t/north/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")

    assert response.status_code == 200
    assert browser.session[LAST_SEEN_AT] > last_seen
    assert "cookie" in _vary(response)


@pytest.mark.django_db
def test_a_session_alone_does_not_open_the_token_channels(radiologist, client_for, token):
    browser = client_for(radiologist)

    assert browser.get("/dicomweb/studies").status_code == 401
    assert browser.get("/api/v1/studies").status_code in (401, 403)
