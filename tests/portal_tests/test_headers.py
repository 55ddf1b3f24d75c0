"""Security headers on every response; no caching of pages that may show PHI."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/t/north/", "/t/north/admin/", "/healthz"])
def test_security_headers_everywhere(path, clinic, tenant_admin, radiologist, client_for):
    user = tenant_admin if "admin" in path else radiologist
    response = client_for(user).get(path)

    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "object-src 'none'" in csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert "camera=()" in response["Permissions-Policy"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/t/north/", "/t/north/audit/", "/accounts/login/"])
def test_pages_are_never_cached(path, clinic, radiologist, privacy_officer, client_for):
    user = privacy_officer if "audit" in path else radiologist

    response = client_for(user).get(path)

    assert "no-store" in response["Cache-Control"]
    assert "private" in response["Cache-Control"]


@pytest.mark.django_db
def test_hsts_on_https_in_production(settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True

    response = Client().get("/accounts/login/", secure=True)

    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "includeSubDomains" in response["Strict-Transport-Security"]


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_http_only_and_same_site(clinic, radiologist):
    from tests.helpers import PASSWORD

    client = Client()
    client.get("/accounts/login/")
    client.post("/accounts/login/", {"username": radiologist.email, "password": PASSWORD})

    session_cookie = client.cookies["portal_session"]
    assert session_cookie["httponly"]
    assert session_cookie["samesite"] == "Lax"


def test_templates_contain_no_inline_script():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "templates"
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.html")
        if "<script>" in path.read_text() or " on" + "click=" in path.read_text()
    ]

    assert offenders == []
