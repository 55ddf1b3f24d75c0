"""Partner API tokens: a presented credential finds its live token and clinic, or nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.actors import Actor
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
