"""Sensitive actions need a second factor verified within the clinic's step-up window."""

from __future__ import annotations

import pytest

from audit.models import Action, AuditEvent
from tenants.mfa import MFA_AT
from tenants.models import User
from tests.helpers import current_totp, membership_of, totp_device_for


def _age_second_factor(client, minutes):
    session = client.session
    session[MFA_AT] = session[MFA_AT] - minutes * 60
    session.save()


@pytest.mark.django_db
def test_role_change_demands_step_up_when_the_factor_is_stale(
    clinic, tenant_admin, radiologist, client_for
):
    client = client_for(tenant_admin)
    url = f"/t/north/admin/tenants/membership/{membership_of(radiologist, clinic).pk}/change/"
    _age_second_factor(client, 11)

    refused = client.post(url, {"roles": ["privacy_officer"], "is_active": "on"})

    assert refused.status_code == 302
    assert refused["Location"].startswith("/accounts/step-up/?next=")
    assert membership_of(radiologist, clinic).role_codes == {"radiologist"}

    device = totp_device_for(tenant_admin)
    client.post("/accounts/step-up/", {"code": current_totp(device), "next": url})
    accepted = client.post(url, {"roles": ["privacy_officer"], "is_active": "on"})

    assert accepted.status_code == 302
    assert membership_of(radiologist, clinic).role_codes == {"privacy_officer"}
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.STEP_UP_VERIFIED).exists()


@pytest.mark.django_db
def test_step_up_window_follows_clinic_policy(clinic, tenant_admin, client_for):
    clinic.step_up_minutes = 30
    clinic.save()
    client = client_for(tenant_admin)
    _age_second_factor(client, 20)

    assert client.get("/t/north/admin/").status_code == 200


@pytest.mark.django_db
def test_new_backup_codes_demand_step_up(clinic, radiologist, client_for):
    client = client_for(radiologist)
    _age_second_factor(client, 11)

    response = client.post("/accounts/security/backup-codes/")

    assert response.status_code == 302
    # Back to the page with the button: the view takes no GET to come back to.
    assert response["Location"] == "/accounts/step-up/?next=%2Faccounts%2Fsecurity%2F"


@pytest.mark.django_db
def test_step_up_rejects_a_wrong_code(clinic, radiologist, client_for):
    client = client_for(radiologist)
    _age_second_factor(client, 11)

    response = client.post("/accounts/step-up/", {"code": "000000", "next": "/t/north/"})

    assert response.status_code == 200
    assert b"not valid" in response.content


@pytest.mark.django_db
def test_platform_admin_demands_step_up_before_an_operator_is_changed(
    platform_operator, client_for
):
    # Making someone an operator (or a clinic's status change) is as sensitive as a
    # clinic's role change: a session left open does not reach it without the factor.
    other = User.objects.create_user(
        email="colleague@platform.example", password="y" * 20, is_staff=True
    )
    client = client_for(platform_operator)
    url = f"/admin/tenants/user/{other.pk}/change/"
    _age_second_factor(client, 11)

    change = {"email": other.email, "is_active": "on", "is_staff": "on", "is_superuser": "on"}
    refused = client.post(url, change)

    assert refused.status_code == 302
    assert refused["Location"].startswith("/accounts/step-up/?next=")
    other.refresh_from_db()
    assert not other.is_superuser

    device = totp_device_for(platform_operator)
    client.post("/accounts/step-up/", {"code": current_totp(device), "next": url})

    accepted = client.post(url, change)

    assert accepted.status_code == 302
    other.refresh_from_db()
    assert other.is_superuser
    platform_events = AuditEvent.objects.unscoped(reason="platform events").filter(tenant=None)
    assert platform_events.filter(action=Action.STEP_UP_VERIFIED).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("site", ["clinic", "platform"])
def test_signing_out_of_an_admin_site_needs_no_fresh_second_factor(
    site, clinic, tenant_admin, platform_operator, client_for
):
    # Asking for a factor to sign out would leave the session open for whoever comes next.
    user, prefix = {
        "clinic": (tenant_admin, f"/t/{clinic.slug}/admin/"),
        "platform": (platform_operator, "/admin/"),
    }[site]
    client = client_for(user)
    _age_second_factor(client, 11)
    assert client.get(prefix)["Location"].startswith("/accounts/step-up/")

    signed_out = client.post(f"{prefix}logout/")

    assert signed_out.status_code == 302
    assert signed_out["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session
    assert client.get(prefix)["Location"].startswith(("/accounts/login/", f"{prefix}login/"))
