"""Sweep every clinic URL pattern: outsiders get the 404 a missing clinic gets.

The URLs carry the clinic's real ids (`tests.url_sweep`), so a request that got past the
clinic's door would reach a view with something to show. `test_cross_clinic_ids` goes
past the door: another clinic's ids asked under the caller's own clinic.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tenants.urlconf import tenant_urlconf
from tests.helpers import make_member, membership_of, page_body
from tests.url_sweep import clinic_objects, clinic_patterns, clinic_urls

MISSING_SLUG = "no-such-clinic"


@pytest.fixture
def north_ids(clinic) -> dict[str, str]:
    known = make_member(clinic, "radiologist", "privacy_officer", email="staff@north.example")
    return clinic_objects(clinic, known=known)


_body = page_body


def _missing_clinic_body(client: Client) -> bytes:
    response = client.get(f"/t/{MISSING_SLUG}/")
    assert response.status_code == 404
    return _body(response)


@pytest.mark.django_db
def test_sweep_covers_every_route_of_every_part_of_a_clinic(clinic, north_ids):
    urls = clinic_urls(clinic.slug, ids=north_ids)

    assert len(urls) == len(clinic_patterns(clinic.slug))  # one URL per route, none lost
    for part in ("", "studies/", "dicomweb/", "my/", "patients/", "shares/", "audit/", "admin/"):
        assert any(url.startswith(f"/t/north/{part}") for url in urls), part
    assert f"/t/north/admin/tenants/membership/{north_ids['membership']}/change/" in urls
    assert f"/t/north/studies/{north_ids['study_id']}/viewer/" in urls


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "head", "post"])
def test_member_of_another_clinic_gets_404_on_every_clinic_url(
    method, clinic, north_ids, other_tenant_all_roles, client_for
):
    client = client_for(other_tenant_all_roles)
    missing_body = _missing_clinic_body(client)

    answers = {url: getattr(client, method)(url) for url in clinic_urls("north", ids=north_ids)}

    wrong = {url: r.status_code for url, r in answers.items() if r.status_code != 404}
    assert wrong == {}
    expected = b"" if method == "head" else missing_body
    leaked = [url for url, r in answers.items() if _body(r) != expected]
    assert leaked == []


@pytest.mark.django_db
def test_platform_operator_without_membership_gets_404_in_a_clinic(
    clinic, north_ids, platform_operator, client_for
):
    client = client_for(platform_operator)
    missing_body = _missing_clinic_body(client)

    answers = {url: client.get(url) for url in clinic_urls("north", ids=north_ids)}

    assert {r.status_code for r in answers.values()} == {404}
    assert [url for url, r in answers.items() if _body(r) != missing_body] == []


@pytest.mark.django_db
def test_anonymous_visitor_is_sent_to_sign_in_whether_or_not_the_clinic_exists(clinic):
    client = Client()

    real = client.get("/t/north/audit/")
    missing = client.get(f"/t/{MISSING_SLUG}/audit/")

    assert real.status_code == missing.status_code == 302
    assert real["Location"] == "/accounts/login/?next=/t/north/audit/"
    assert missing["Location"] == f"/accounts/login/?next=/t/{MISSING_SLUG}/audit/"


@pytest.mark.django_db
def test_suspended_clinic_is_404_for_its_own_members(clinic, radiologist, client_for):
    clinic.status = clinic.Status.SUSPENDED
    clinic.save()

    response = client_for(radiologist).get("/t/north/")

    assert response.status_code == 404


@pytest.mark.django_db
def test_deactivated_membership_is_404(clinic, radiologist, tenant_admin, client_for):
    from audit.actors import Actor
    from tenants.services import membership_update

    membership_update(
        membership=membership_of(radiologist, clinic),
        roles={"radiologist"},
        is_active=False,
        actor=Actor.for_user(tenant_admin),
    )

    assert client_for(radiologist).get("/t/north/").status_code == 404


def test_route_regexes_match_their_reversals():
    # Guard for the sweep itself: literal clinic prefix in the tenant URLconf.
    assert re.match(r"^t/north/admin/", str(tenant_urlconf("north").urlpatterns[0].pattern))
