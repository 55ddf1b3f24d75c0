"""Partner API tokens: a presented credential finds its live token and clinic, or nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.test import Client
from django.utils import timezone

from audit.actors import Actor
from audit.models import Action, AuditEvent
from tenants.models import ApiToken, Tenant
from tenants.tokens import api_token_authenticate, api_token_create, api_token_revoke

ACTOR = Actor.system("tests")


def _create(tenant, **options):
    return api_token_create(
        tenant=tenant,
        name="PACS bridge",
        scopes=["dicomweb:read", "studies:read"],
        actor=ACTOR,
        now=timezone.now(),
        **options,
    )


@pytest.mark.django_db
def test_the_token_found_is_the_stored_row_with_its_clinic(clinic):
    token, credential = _create(clinic, expires_days=30)

    found = api_token_authenticate(raw=credential, now=timezone.now())

    stored = ApiToken.objects.for_tenant(clinic).select_related("tenant").get(pk=token.pk)
    for field in ApiToken._meta.concrete_fields:
        if field.name != "last_used_at":  # this use has just set it
            assert getattr(found, field.attname) == getattr(stored, field.attname), field.name
    for field in Tenant._meta.concrete_fields:
        assert getattr(found.tenant, field.attname) == getattr(clinic, field.attname), field.name
    assert found.scopes == ["dicomweb:read", "studies:read"]
    assert found.has_scope("dicomweb:read") and not found.has_scope("dicomweb:write")
    assert found.expires_at.tzinfo is not None
    assert not found._state.adding
    stored.refresh_from_db()
    assert stored.last_used_at is not None


@pytest.mark.django_db
def test_a_wrong_secret_an_unknown_prefix_and_junk_find_nothing(clinic):
    _, credential = _create(clinic)
    label, prefix, secret = credential.split("_", 2)

    for raw in (
        f"{label}_{prefix}_{secret[:-1]}x",
        f"{label}_00000000_{secret}",
        f"xyz_{prefix}_{secret}",
        "",
        "ptk__",
    ):
        assert api_token_authenticate(raw=raw, now=timezone.now()) is None, raw


@pytest.mark.django_db
def test_revoked_expired_and_suspended_clinic_tokens_find_nothing(clinic, other_clinic):
    now = timezone.now()
    revoked, revoked_credential = _create(clinic)
    api_token_revoke(token=revoked, actor=ACTOR, now=now)
    _, expiring_credential = _create(clinic, expires_days=1)
    _, suspended_credential = _create(other_clinic)
    Tenant.objects.filter(pk=other_clinic.pk).update(status=Tenant.Status.SUSPENDED)

    assert api_token_authenticate(raw=revoked_credential, now=now) is None
    assert api_token_authenticate(raw=expiring_credential, now=now) is not None
    assert api_token_authenticate(raw=expiring_credential, now=now + dt.timedelta(days=2)) is None
    assert api_token_authenticate(raw=suspended_credential, now=now) is None


@pytest.mark.django_db
def test_each_credential_finds_its_own_clinic(clinic, other_clinic):
    _, ours = _create(clinic)
    _, theirs = _create(other_clinic)

    assert api_token_authenticate(raw=ours, now=timezone.now()).tenant == clinic
    assert api_token_authenticate(raw=theirs, now=timezone.now()).tenant == other_clinic


def _refusals(tenant) -> list[tuple[str, str, str, str]]:
    return [
        (e.actor_type, e.actor_id, e.target_id, e.detail["reason"])
        for e in AuditEvent.objects.for_tenant(tenant).filter(action=Action.API_TOKEN_REFUSED)
    ]


@pytest.mark.django_db
def test_a_revoked_token_still_calling_is_told_so_and_the_clinic_sees_it_once_a_minute(
    clinic, other_clinic, monkeypatch
):
    token, credential = _create(clinic)
    api_token_revoke(token=token, actor=ACTOR, now=timezone.now())
    moment = dt.datetime(2026, 11, 24, 10, 0, 30, tzinfo=dt.UTC)
    monkeypatch.setattr(timezone, "now", lambda: moment)  # both calls in one minute
    caller = Client(headers={"Authorization": f"Bearer {credential}"})

    dicomweb = caller.get("/dicomweb/studies")
    rest = caller.get("/api/v1/studies")

    assert dicomweb.status_code == 401 and rest.status_code == 401
    assert "revoked by the clinic" in dicomweb.json()["error"]
    assert "revoked by the clinic" in json.dumps(rest.json())
    assert _refusals(clinic) == [("api_token", str(token.pk), str(token.pk), "revoked")]
    assert _refusals(other_clinic) == []


@pytest.mark.django_db
def test_an_expired_token_is_told_its_date(clinic):
    token, credential = _create(clinic, expires_days=1)
    ApiToken.objects.for_tenant(clinic).filter(pk=token.pk).update(
        expires_at=dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)
    )

    response = Client(headers={"Authorization": f"Bearer {credential}"}).get("/dicomweb/studies")

    assert response.status_code == 401
    assert "expired on 2026-01-31" in response.json()["error"]
    assert _refusals(clinic) == [("api_token", str(token.pk), str(token.pk), "expired")]


@pytest.mark.django_db
def test_a_wrong_secret_learns_nothing_and_writes_nothing(clinic):
    token, credential = _create(clinic)
    api_token_revoke(token=token, actor=ACTOR, now=timezone.now())
    label, prefix, secret = credential.split("_", 2)
    guess = f"{label}_{prefix}_{secret[:-1]}x"

    response = Client(headers={"Authorization": f"Bearer {guess}"}).get("/dicomweb/studies")
    unknown = Client(headers={"Authorization": "Bearer ptk_00000000_x"}).get("/dicomweb/studies")

    # Not "revoked": only the secret proves its holder knows that much.
    assert response.json()["error"] == unknown.json()["error"]
    assert "valid, unexpired API token is required" in response.json()["error"]
    assert _refusals(clinic) == []  # work done only for a real prefix would time it
