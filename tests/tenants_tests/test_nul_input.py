"""A NUL where a clinic slug, a session key or a token's prefix goes: the missing clinic's
404, a fresh session or an unknown credential's 401, never a server error. (SQLite
compares such text and finds nothing; PostgreSQL refuses to hold it and raises, so these
matter there, as in CI.)"""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.session_store import SessionStore
from tests.helpers import page_body

pytestmark = pytest.mark.django_db


def test_a_nul_in_the_clinic_slug_is_the_missing_clinics_404(clinic, radiologist, client_for):
    client = client_for(radiologist)
    missing = client.get("/t/no-such-clinic/")

    answers = [client.get("/t/%00/"), client.get("/t/north%00/audit/")]

    for answer in answers:
        assert answer.status_code == 404
        assert page_body(answer) == page_body(missing)


def test_a_session_cookie_no_session_key_can_be_starts_a_fresh_session(clinic):
    client = Client()
    client.cookies["portal_session"] = "abcdefgh\x00"

    sign_in = client.get("/accounts/login/")

    assert sign_in.status_code == 200
    assert SessionStore("abcdefgh\x00").session_key is None
    assert SessionStore("ABCDEFGH12").session_key is None  # Django makes a-z0-9 only
    assert SessionStore("abcdefgh12").session_key == "abcdefgh12"


@pytest.mark.parametrize("path", ["/dicomweb/studies", "/api/v1/studies"])
@pytest.mark.parametrize("prefix", ["a\x00b", "0123456\x00", "ABCDEF01", "0123456789"])
def test_a_token_prefix_this_server_never_makes_is_an_unknown_credential(clinic, path, prefix):
    response = Client().get(path, HTTP_AUTHORIZATION=f"Bearer ptk_{prefix}_secret")

    assert response.status_code == 401
