"""API token scopes: a member gives a token only what their own roles allow; tokens made
in the admin expire within a year; the operator's command validates what it is given."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tenants.models import ApiToken
from tenants.tokens import MAX_EXPIRES_DAYS, SCOPE_PERMS, api_token_create
from tests.helpers import TEST_ACTOR, make_member

ADD_URL = "/t/north/admin/tenants/apitoken/add/"


def create(
    tenant, scopes: list[str], created_by=None, expires_days: int | None = 30, name: str = "RIS"
):
    return api_token_create(
        tenant=tenant,
        name=name,
        scopes=scopes,
        actor=TEST_ACTOR,
        now=timezone.now(),
        expires_days=expires_days,
        created_by=created_by,
    )


def test_every_scope_names_the_permissions_it_needs():
    assert set(SCOPE_PERMS) == set(ApiToken.Scope.values)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("roles", "scope"),
    [
        (("tenant_admin", "technologist"), "dicomweb:read"),
        (("tenant_admin", "technologist"), "dicomweb:write"),
        (("tenant_admin", "front_desk"), "studies:read"),
        (("tenant_admin", "radiologist"), "confidential:read"),
    ],
)
def test_a_scope_is_given_when_the_creators_roles_allow_it(clinic, roles, scope):
    creator = make_member(clinic, *roles)

    token, _ = create(clinic, [scope], created_by=creator)

    assert token.scopes == [scope] and token.created_by == creator


@pytest.mark.django_db
def test_a_token_that_shares_is_given_only_with_reading_images(clinic):
    """share_create refuses every link to a token that may not read what it shows."""
    creator = make_member(clinic, "tenant_admin", "radiologist")

    token, _ = create(clinic, ["shares:write", "dicomweb:read"], created_by=creator)
    with pytest.raises(ValidationError, match="shares:write also needs dicomweb:read"):
        create(clinic, ["shares:write"], created_by=creator)
    with pytest.raises(ValidationError, match="shares:write also needs dicomweb:read"):
        create(clinic, ["shares:write", "studies:read"])

    assert ApiToken.objects.for_tenant(clinic).get() == token
    assert token.scopes == ["dicomweb:read", "shares:write"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("roles", "scope"),
    [
        (("tenant_admin",), "dicomweb:read"),
        (("tenant_admin",), "studies:read"),
        (("tenant_admin",), "confidential:read"),
        (("tenant_admin", "technologist"), "shares:write"),
        (("tenant_admin", "technologist"), "confidential:read"),
        (("tenant_admin", "front_desk"), "dicomweb:read"),
        (("tenant_admin", "referring_physician"), "dicomweb:read"),
        (("tenant_admin", "privacy_officer"), "studies:read"),
    ],
)
def test_a_scope_is_refused_without_the_roles_behind_it(clinic, roles, scope):
    creator = make_member(clinic, *roles)

    with pytest.raises(ValidationError, match=f"do not allow giving a token {scope}"):
        create(clinic, [scope], created_by=creator)

    assert not ApiToken.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_roles_in_another_clinic_grant_nothing_here(clinic, other_clinic):
    outsider = make_member(other_clinic, "tenant_admin", "radiologist")

    with pytest.raises(ValidationError, match="do not allow"):
        create(clinic, ["studies:read"], created_by=outsider)

    assert not ApiToken.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_a_deactivated_member_grants_nothing(clinic):
    from tenants.services import membership_update
    from tests.helpers import membership_of

    creator = make_member(clinic, "tenant_admin", "radiologist")
    membership = membership_of(creator, clinic)
    make_member(clinic, "tenant_admin", email="remaining-admin@north.example")
    membership_update(
        membership=membership, roles=membership.role_codes, is_active=False, actor=TEST_ACTOR
    )

    with pytest.raises(ValidationError, match="do not allow"):
        create(clinic, ["studies:read"], created_by=creator)


@pytest.mark.django_db
def test_tenant_admin_is_offered_no_scope_and_refused_with_a_clear_error(
    clinic, tenant_admin, client_for
):
    client = client_for(tenant_admin)

    page = client.get(ADD_URL)
    response = client.post(
        ADD_URL,
        {"name": "RIS", "scopes": ["dicomweb:read", "confidential:read"], "expires_days": "30"},
    )

    assert page.status_code == 200
    assert page.context["adminform"].form.fields["scopes"].choices == []
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["scopes"]
    assert errors == ["Your roles in this clinic do not allow giving a token dicomweb:read."]
    assert not ApiToken.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_admin_offers_and_accepts_only_the_scopes_the_admins_roles_grant(
    clinic, other_tenant_admin, client_for
):
    admin_technologist = make_member(clinic, "tenant_admin", "technologist")
    client = client_for(admin_technologist)

    page = client.get(ADD_URL)
    refused = client.post(
        ADD_URL, {"name": "AI", "scopes": ["confidential:read"], "expires_days": "30"}
    )
    outsider = client_for(other_tenant_admin).post(
        ADD_URL, {"name": "AI", "scopes": ["studies:read"], "expires_days": "30"}
    )
    created = client.post(
        ADD_URL, {"name": "RIS", "scopes": ["dicomweb:read"], "expires_days": "30"}
    )

    offered = [value for value, _ in page.context["adminform"].form.fields["scopes"].choices]
    assert offered == ["dicomweb:read", "dicomweb:write", "studies:read"]
    assert refused.status_code == 200 and "confidential:read" in str(
        refused.context["adminform"].form.errors["scopes"]
    )
    assert outsider.status_code == 404
    assert created.status_code == 200 and "plaintext" in created.context
    token = ApiToken.objects.for_tenant(clinic).get()
    assert token.scopes == ["dicomweb:read"] and token.created_by == admin_technologist


@pytest.mark.django_db
@pytest.mark.parametrize(("days", "accepted"), [("", False), ("366", False), ("365", True)])
def test_admin_tokens_expire_within_a_year(clinic, client_for, days, accepted):
    client = client_for(make_member(clinic, "tenant_admin", "technologist"))

    page = client.get(ADD_URL)
    response = client.post(
        ADD_URL, {"name": "RIS", "scopes": ["studies:read"], "expires_days": days}
    )

    assert page.context["adminform"].form.fields["expires_days"].initial == 90
    assert ApiToken.objects.for_tenant(clinic).exists() is accepted
    if not accepted:
        assert response.context["adminform"].form.errors["expires_days"]


@pytest.mark.django_db
def test_command_refuses_an_expiry_beyond_ten_years_with_a_clear_error(clinic):
    with pytest.raises(CommandError, match=f"1 to {MAX_EXPIRES_DAYS} days"):
        call_command(
            "create_api_token",
            "--tenant",
            "north",
            "--name",
            "x",
            "--scopes",
            "studies:read",
            "--expires-days",
            "5000000",
        )

    assert not ApiToken.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_the_service_caps_the_expiry(clinic):
    with pytest.raises(ValidationError, match=f"1 to {MAX_EXPIRES_DAYS} days"):
        create(clinic, ["studies:read"], expires_days=MAX_EXPIRES_DAYS + 1)

    token, _ = create(clinic, ["studies:read"], expires_days=MAX_EXPIRES_DAYS)
    assert token.expires_at is not None


@pytest.mark.django_db
def test_the_operators_command_may_give_any_scope(clinic, capsys):
    call_command(
        "create_api_token",
        "--tenant",
        "north",
        "--name",
        "archive",
        "--scopes",
        "dicomweb:read,confidential:read",
    )

    token = ApiToken.objects.for_tenant(clinic).get()
    assert token.scopes == ["confidential:read", "dicomweb:read"]
    assert token.created_by is None


def _bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _set_membership(user, tenant, *, roles, is_active=True) -> None:
    from tenants.services import membership_update
    from tests.helpers import membership_of

    membership_update(
        membership=membership_of(user, tenant), roles=roles, is_active=is_active, actor=TEST_ACTOR
    )


@pytest.mark.django_db
def test_a_token_stops_working_when_its_creator_leaves_the_clinic(clinic, client):
    creator = make_member(clinic, "tenant_admin", "radiologist")
    make_member(clinic, "tenant_admin", email="remaining-admin@north.example")
    _, raw = create(clinic, ["studies:read", "dicomweb:read"], created_by=creator)
    assert client.get("/api/v1/studies", **_bearer(raw)).status_code == 200

    _set_membership(creator, clinic, roles={"tenant_admin", "radiologist"}, is_active=False)
    rest = client.get("/api/v1/studies", **_bearer(raw))
    dicomweb = client.get("/dicomweb/studies", **_bearer(raw))

    assert rest.status_code == dicomweb.status_code == 403
    assert "studies:read scope is suspended" in rest.json()["error"]["message"]
    assert "dicomweb:read scope is suspended" in dicomweb.json()["error"]


@pytest.mark.django_db
def test_a_token_stops_working_when_its_creators_account_is_disabled(clinic, client):
    creator = make_member(clinic, "radiologist")
    _, raw = create(clinic, ["studies:read"], created_by=creator)

    creator.is_active = False
    creator.save(update_fields=["is_active"])

    assert client.get("/api/v1/studies", **_bearer(raw)).status_code == 403


@pytest.mark.django_db
def test_a_scope_is_suspended_while_its_creator_lacks_the_role_behind_it(clinic, client):
    from audit.models import Action, AuditEvent

    creator = make_member(clinic, "tenant_admin", "radiologist")
    _, raw = create(clinic, ["studies:read", "dicomweb:read"], created_by=creator)

    _set_membership(creator, clinic, roles={"tenant_admin", "front_desk"})
    kept = client.get("/api/v1/studies", **_bearer(raw))
    suspended = client.get("/dicomweb/studies", **_bearer(raw))
    _set_membership(creator, clinic, roles={"tenant_admin"})
    lost = client.get("/api/v1/studies", **_bearer(raw))
    _set_membership(creator, clinic, roles={"tenant_admin", "radiologist"})
    back = client.get("/dicomweb/studies", **_bearer(raw))

    assert kept.status_code == 200  # front desk still sees the worklist, not images
    assert suspended.status_code == lost.status_code == 403
    assert back.status_code == 204  # the role came back, and with it the scope (no studies)
    denied = AuditEvent.objects.for_tenant(clinic).filter(action=Action.ACCESS_DENIED)
    assert any("dicomweb:read scope is suspended" in e.detail["reason"] for e in denied)


@pytest.mark.django_db
def test_roles_elsewhere_do_not_keep_a_token_alive(clinic, other_clinic, client):
    creator = make_member(clinic, "radiologist", email="moves@north.example")
    make_member(other_clinic, "radiologist", email="moves@north.example")
    _, raw = create(clinic, ["studies:read"], created_by=creator)

    _set_membership(creator, clinic, roles={"radiologist"}, is_active=False)

    assert client.get("/api/v1/studies", **_bearer(raw)).status_code == 403


@pytest.mark.django_db
def test_an_operators_token_keeps_its_scopes(clinic, client):
    _, raw = create(clinic, ["studies:read"], created_by=None)

    assert client.get("/api/v1/studies", **_bearer(raw)).status_code == 200


@pytest.mark.django_db
def test_the_token_list_names_the_scopes_suspended(clinic, tenant_admin, client_for):
    creator = make_member(clinic, "radiologist", "tenant_admin", email="leaver@north.example")
    create(clinic, ["studies:read", "dicomweb:read"], created_by=creator)
    _set_membership(creator, clinic, roles={"tenant_admin", "front_desk"})

    page = client_for(tenant_admin).get("/t/north/admin/tenants/apitoken/")

    assert b"dicomweb:read, studies:read (suspended: dicomweb:read;" in page.content


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "R" * 101, "vendor\nToken 1234 for north"])
def test_command_refuses_a_name_nobody_could_tell_apart(clinic, name):
    with pytest.raises(CommandError, match="Name the token on one line, 1 to 100 characters"):
        call_command(
            "create_api_token", "--tenant", "north", "--name", name, "--scopes", "studies:read"
        )

    assert not ApiToken.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_the_token_name_is_kept_without_the_spaces_around_it(clinic):
    token, _ = create(clinic, ["studies:read"], name="  Vendor RIS  ")

    assert token.name == "Vendor RIS"
