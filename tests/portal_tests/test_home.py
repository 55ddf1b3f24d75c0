"""The signed-in landing page: straight into a single clinic, a chooser for several."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.helpers import make_member


@pytest.mark.django_db
def test_single_clinic_member_lands_on_their_first_page(privacy_officer, client_for):
    response = client_for(privacy_officer).get("/")

    assert response.status_code == 302
    assert response["Location"] == "/t/north/audit/"


@pytest.mark.django_db
def test_teleradiologist_chooses_between_their_clinics(clinic, other_clinic, client_for):
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    make_member(other_clinic, "tenant_admin", email="tele@rad.example")

    response = client_for(user).get("/")

    assert response.status_code == 200
    assert b'href="/t/north/"' in response.content
    assert b'href="/t/south/admin/"' in response.content


@pytest.mark.django_db
def test_account_without_clinic_is_told_so(clinic, radiologist, client_for):
    from audit.actors import Actor
    from tenants.services import membership_update
    from tests.helpers import membership_of

    membership_update(
        membership=membership_of(radiologist, clinic),
        roles={"radiologist"},
        is_active=False,
        actor=Actor.system("tests"),
    )

    response = client_for(radiologist).get("/")

    assert b"not a member of any clinic" in response.content
    assert b"North Imaging" not in response.content


@pytest.mark.django_db
def test_anonymous_home_goes_to_sign_in(db):
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_sign_in_page_renders(db):
    response = Client().get("/accounts/login/")

    assert response.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert b'autocomplete="current-password"' in response.content
