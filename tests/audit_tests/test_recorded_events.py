"""Sign-in, sign-out and reading the audit log are recorded, without PHI or typed secrets."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from audit.models import Action, AuditEvent, Outcome
from tests.helpers import PASSWORD, make_member


def _latest(tenant, action):
    return AuditEvent.objects.for_tenant(tenant).filter(action=action).latest("seq")


def _platform(action):
    return AuditEvent.objects.unscoped(reason="test").filter(tenant=None, action=action)


@pytest.mark.django_db
def test_sign_in_is_recorded_in_each_clinic_of_the_user(clinic, other_clinic):
    user = make_member(clinic, "radiologist", email="tele@rad.example")
    make_member(other_clinic, "radiologist", email="tele@rad.example")
    client = Client(REMOTE_ADDR="203.0.113.7")

    response = client.post(
        "/accounts/login/", {"username": "Tele@Rad.example", "password": PASSWORD}
    )

    assert response.status_code == 302
    for tenant in (clinic, other_clinic):
        event = _latest(tenant, Action.LOGIN_SUCCEEDED)
        assert (event.actor_id, event.actor_ip, event.outcome) == (
            str(user.pk),
            "203.0.113.7",
            Outcome.SUCCESS,
        )


@pytest.mark.django_db
def test_failed_sign_in_is_recorded_without_the_typed_username(clinic, radiologist):
    client = Client(REMOTE_ADDR="198.51.100.4")

    response = client.post("/accounts/login/", {"username": radiologist.email, "password": "nope"})

    assert response.status_code == 200
    event = _latest(clinic, Action.LOGIN_FAILED)
    assert event.outcome == Outcome.FAILURE
    assert event.target_id == str(radiologist.pk)
    assert event.actor_ip == "198.51.100.4"
    assert radiologist.email not in json.dumps(event.detail)


@pytest.mark.django_db
def test_failed_sign_in_of_unknown_account_goes_to_platform_chain(db):
    typed = "my-Secret-Password@oops.example"

    Client().post("/accounts/login/", {"username": typed, "password": "whatever"})

    event = _platform(Action.LOGIN_FAILED).latest("seq")
    assert event.detail == {"reason": "invalid_credentials", "known_account": False}
    assert typed.lower() not in json.dumps(event.detail).lower()
    assert event.target_id == ""


@pytest.mark.django_db
def test_sign_out_is_recorded(clinic, radiologist):
    client = Client()
    client.post("/accounts/login/", {"username": radiologist.email, "password": PASSWORD})

    response = client.post("/accounts/logout/")

    assert response.status_code == 302
    assert _latest(clinic, Action.LOGOUT).actor_id == str(radiologist.pk)
    assert client.get("/t/north/").status_code == 302


@pytest.mark.django_db
def test_privacy_officer_reads_own_clinics_log_and_the_read_is_audited(
    clinic, other_clinic, privacy_officer, client_for
):
    make_member(other_clinic, "radiologist")
    foreign_seqs = AuditEvent.objects.for_tenant(other_clinic).count()

    response = client_for(privacy_officer).get("/t/north/audit/")

    assert response.status_code == 200
    shown = list(response.context["page"])
    assert shown and all(event.tenant_id == clinic.pk for event in shown)
    assert foreign_seqs > 0
    viewed = _latest(clinic, Action.AUDIT_VIEWED)
    assert viewed.actor_id == str(privacy_officer.pk)


@pytest.mark.django_db
def test_audit_page_is_not_cached(clinic, privacy_officer, client_for):
    response = client_for(privacy_officer).get("/t/north/audit/")

    assert "no-store" in response["Cache-Control"]
