"""Sessions end on idle, at their absolute lifetime, and when access is taken away."""

from __future__ import annotations

import time

import pytest

from audit.actors import Actor
from audit.models import Action, AuditEvent
from tenants.services import membership_update
from tenants.sessions import ABSOLUTE_LIMIT, IDLE_LIMIT, LAST_SEEN_AT, STARTED_AT
from tests.helpers import make_member, membership_of


def _shift(client, key, seconds):
    session = client.session
    session[key] = session[key] - seconds
    session.save()


def _expired_events(tenant, reason):
    return AuditEvent.objects.for_tenant(tenant).filter(
        action__in=[Action.SESSION_EXPIRED, Action.SESSION_REVOKED], detail__reason=reason
    )


@pytest.mark.django_db
def test_limits_come_from_the_strictest_clinic(clinic, other_clinic, client_for):
    other_clinic.session_idle_minutes = 5
    other_clinic.session_absolute_hours = 8
    other_clinic.save()
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    make_member(other_clinic, "radiologist", email="tele@rad.example")

    session = client_for(user).session

    assert session[IDLE_LIMIT] == 5 * 60
    assert session[ABSOLUTE_LIMIT] == 8 * 3600


@pytest.mark.django_db
def test_idle_session_ends(clinic, radiologist, client_for):
    client = client_for(radiologist)
    assert client.get("/t/north/").status_code == 200

    _shift(client, LAST_SEEN_AT, 15 * 60 + 1)
    response = client.get("/t/north/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Ft%2Fnorth%2F"
    assert client.get("/t/north/").status_code == 302
    assert _expired_events(clinic, "idle").exists()


@pytest.mark.django_db
def test_activity_keeps_the_session_alive(clinic, radiologist, client_for):
    client = client_for(radiologist)
    _shift(client, LAST_SEEN_AT, 14 * 60)

    assert client.get("/t/north/").status_code == 200
    assert time.time() - client.session[LAST_SEEN_AT] < 5


@pytest.mark.django_db
def test_absolute_lifetime_ends_even_an_active_session(clinic, radiologist, client_for):
    client = client_for(radiologist)

    _shift(client, STARTED_AT, 12 * 3600 + 1)
    response = client.get("/t/north/")

    assert response.status_code == 302
    assert _expired_events(clinic, "absolute").exists()


@pytest.mark.django_db
def test_deactivated_user_is_signed_out_on_the_next_request(clinic, radiologist, client_for):
    client = client_for(radiologist)
    radiologist.is_active = False
    radiologist.save()

    response = client.get("/t/north/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_removed_membership_ends_the_session(clinic, other_clinic, tenant_admin, client_for):
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    make_member(other_clinic, "radiologist", email="tele@rad.example")
    client = client_for(user)
    assert client.get("/t/south/").status_code == 200

    membership_update(
        membership=membership_of(user, clinic),
        roles={"radiologist"},
        is_active=False,
        actor=Actor.for_user(tenant_admin),
    )
    response = client.get("/t/south/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert _expired_events(other_clinic, "access_changed").exists()


@pytest.mark.django_db
def test_suspended_clinic_ends_its_members_sessions(clinic, radiologist, client_for):
    client = client_for(radiologist)
    clinic.status = clinic.Status.SUSPENDED
    clinic.save()

    assert client.get("/").status_code == 302
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_clinic_joined_mid_session_binds_the_session_to_its_limits(
    clinic, other_clinic, client_for
):
    other_clinic.session_idle_minutes = 5
    other_clinic.save()
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    client = client_for(user)
    assert client.session[IDLE_LIMIT] == 15 * 60

    make_member(other_clinic, "radiologist", email="tele@rad.example")
    assert client.get("/t/south/").status_code == 200
    _shift(client, LAST_SEEN_AT, 5 * 60 + 1)
    response = client.get("/t/north/")

    assert response.status_code == 302
    assert _expired_events(clinic, "idle").exists()


@pytest.mark.django_db
def test_a_clinic_shortening_its_limits_binds_sessions_already_open(
    clinic, radiologist, client_for
):
    client = client_for(radiologist)
    assert client.get("/t/north/").status_code == 200

    clinic.session_absolute_hours = 1
    clinic.save()
    _shift(client, STARTED_AT, 3600 + 1)
    response = client.get("/t/north/")

    assert response.status_code == 302
    assert _expired_events(clinic, "absolute").exists()


@pytest.mark.django_db
def test_a_membership_added_mid_session_and_removed_ends_the_session(
    clinic, other_clinic, tenant_admin, client_for
):
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    client = client_for(user)
    make_member(other_clinic, "radiologist", email="tele@rad.example")
    assert client.get("/t/south/").status_code == 200

    membership_update(
        membership=membership_of(user, other_clinic),
        roles={"radiologist"},
        is_active=False,
        actor=Actor.system("test"),
    )
    response = client.get("/t/north/")

    assert response.status_code == 302
    assert _expired_events(clinic, "access_changed").exists()
