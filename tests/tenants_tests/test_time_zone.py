"""Each clinic reads times in its own zone: pages, the recipient's page, emails and the
audit log's dates. Records stay in UTC; a request leaves no zone behind for the next."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

import audit
from audit.models import Action, AuditEvent
from sharing.invitations import patient_invite
from sharing.models import ShareLink
from sharing.services import share_create
from tenants.models import Tenant
from tenants.services import tenant_update_policy
from tenants.timezones import local_time_text, time_zone_names, zone_named
from tests.helpers import TEST_ACTOR, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

TOKYO = "Asia/Tokyo"  # +09:00 all year: the expected text does not move with the season


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane"))


def in_zone(tenant: Tenant, name: str) -> Tenant:
    return tenant_update_policy(tenant=tenant, actor=TEST_ACTOR, changes={"time_zone": name})


def late_evening_utc(days_ahead: int) -> dt.datetime:
    """23:30 UTC some days from now: the next calendar day in Tokyo (08:30 JST)."""
    day = timezone.now() + dt.timedelta(days=days_ahead)
    return day.replace(hour=23, minute=30, second=0, microsecond=0)


def tokyo_text(at: dt.datetime) -> str:
    return f"{(at + dt.timedelta(days=1)).date():%Y-%m-%d} 08:30 JST"


def link(study, user, **options) -> tuple[ShareLink, str]:
    return share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(user, study.tenant),
        **options,
    )


# --- Pages ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_share_page_shows_times_in_the_clinics_zone(clinic, study, radiologist, client_for):
    in_zone(clinic, TOKYO)
    expires_at = late_evening_utc(days_ahead=3)
    share, _ = link(study, radiologist, expires_at=expires_at, pin="4711")

    page = client_for(radiologist).get(f"/t/north/shares/{share.pk}/")

    assert page.status_code == 200
    assert tokyo_text(expires_at).encode() in page.content
    assert b"(Asia/Tokyo)" in page.content  # the history's column says which zone
    assert b" UTC" not in page.content


@pytest.mark.django_db
def test_a_clinic_in_utc_is_unaffected_and_no_zone_outlives_a_request(
    clinic, other_clinic, study, radiologist, other_tenant_all_roles, client_for
):
    in_zone(clinic, TOKYO)
    other_study = ingest_study(other_clinic, synthetic_ct(slices=1, size=16))
    expires_at = late_evening_utc(days_ahead=3)
    ours, _ = link(study, radiologist, expires_at=expires_at, pin="4711")
    theirs, _ = link(other_study, other_tenant_all_roles, expires_at=expires_at, pin="4711")

    client_for(radiologist).get(f"/t/north/shares/{ours.pk}/")
    zone_after = timezone.get_current_timezone_name()
    page = client_for(other_tenant_all_roles).get(f"/t/south/shares/{theirs.pk}/")

    assert zone_after == "UTC"
    assert f"{expires_at:%Y-%m-%d} 23:30 UTC".encode() in page.content
    assert b"JST" not in page.content


@pytest.mark.django_db
def test_recipient_reads_the_expiry_in_the_clinics_zone(clinic, study, radiologist):
    in_zone(clinic, TOKYO)
    expires_at = late_evening_utc(days_ahead=3)
    _, token = link(study, radiologist, expires_at=expires_at, challenge=ShareLink.Challenge.NONE)
    recipient = Client()
    recipient.get(f"/s/{token}")
    recipient.post("/s/")

    page = recipient.get("/s/")

    assert page.status_code == 200
    assert tokyo_text(expires_at).encode() in page.content


@pytest.mark.django_db
def test_audit_log_dates_are_the_clinics_days(
    clinic, study, privacy_officer, client_for, django_capture_on_commit_callbacks
):
    in_zone(clinic, TOKYO)
    # 23:30 UTC on the 15th is 08:30 on the 16th in Tokyo.
    at = dt.datetime(2026, 1, 15, 23, 30, tzinfo=dt.UTC)
    audit.record(actor=TEST_ACTOR, action=Action.STUDY_VIEWED, target=study, tenant=clinic, at=at)
    client = client_for(privacy_officer)

    def found(day: str) -> bool:
        page = client.get(
            "/t/north/audit/",
            {"action": Action.STUDY_VIEWED, "date_from": day, "date_to": day},
        )
        assert page.status_code == 200
        # With its zone: the hour repeated when clocks go back reads twice otherwise.
        return b"2026-01-16 08:30:00 JST" in page.content

    assert found("2026-01-16")
    assert not found("2026-01-15")


# --- Emails -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_share_email_gives_the_expiry_in_the_clinics_zone(
    clinic, study, radiologist, django_capture_on_commit_callbacks
):
    in_zone(clinic, TOKYO)
    expires_at = late_evening_utc(days_ahead=3)

    with django_capture_on_commit_callbacks(execute=True):
        link(
            study,
            radiologist,
            expires_at=expires_at,
            pin="4711",
            recipient_email="doctor@elsewhere.example",
        )

    (message,) = mail.outbox
    assert f"expires on {tokyo_text(expires_at)}." in message.body
    assert "UTC" not in message.body


@pytest.mark.django_db
def test_portal_invitation_email_gives_the_expiry_in_the_clinics_zone(
    clinic, study, front_desk, django_capture_on_commit_callbacks
):
    in_zone(clinic, TOKYO)

    with django_capture_on_commit_callbacks(execute=True):
        invitation = patient_invite(
            tenant=clinic,
            patients=[study.patient],
            email="jane@example.org",
            invited_by=front_desk,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )

    (message,) = mail.outbox
    local = invitation.expires_at.astimezone(zoneinfo.ZoneInfo(TOKYO))
    assert f"expires on {local:%Y-%m-%d %H:%M} JST." in message.body
    assert "UTC" not in message.body


def test_local_time_names_the_zone_and_follows_daylight_saving():
    zurich = zone_named("Europe/Zurich")

    winter = local_time_text(at=dt.datetime(2026, 1, 15, 23, 30, tzinfo=dt.UTC), zone=zurich)
    summer = local_time_text(at=dt.datetime(2026, 7, 15, 23, 30, tzinfo=dt.UTC), zone=zurich)

    assert winter == "2026-01-16 00:30 CET"
    assert summer == "2026-07-16 01:30 CEST"


def test_a_zone_gone_from_the_database_shows_utc_rather_than_failing():
    assert zone_named("Atlantis/Capital").key == "UTC"
    assert zone_named("../../etc/passwd").key == "UTC"


# --- Choosing the zone ------------------------------------------------------------------


@pytest.mark.django_db
def test_tenant_admin_sets_the_zone_and_the_change_is_audited(clinic, tenant_admin, client_for):
    policy = {
        "name": "North Imaging",
        "session_idle_minutes": 15,
        "session_absolute_hours": 12,
        "step_up_minutes": 10,
        "share_link_default_days": 7,
        "share_link_max_days": 30,
    }
    url = f"/t/north/admin/tenants/tenant/{clinic.pk}/change/"
    client = client_for(tenant_admin)

    refused = client.post(url, {**policy, "time_zone": "Mars/Olympus_Mons"})
    clinic.refresh_from_db()
    zone_after_refusal = clinic.time_zone
    accepted = client.post(url, {**policy, "time_zone": "Europe/Zurich"})

    assert refused.status_code == 200 and refused.context["adminform"].form.errors["time_zone"]
    assert zone_after_refusal == "UTC"
    assert accepted.status_code == 302
    clinic.refresh_from_db()
    assert clinic.time_zone == "Europe/Zurich"
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.TENANT_UPDATED).latest("seq")
    assert event.detail["fields"] == ["time_zone"]


@pytest.mark.django_db
def test_other_clinics_admin_cannot_set_our_zone(clinic, other_tenant_admin, client_for):
    response = client_for(other_tenant_admin).post(
        f"/t/north/admin/tenants/tenant/{clinic.pk}/change/", {"time_zone": "Asia/Tokyo"}
    )

    assert response.status_code == 404
    clinic.refresh_from_db()
    assert clinic.time_zone == "UTC"


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "EST5EDT", "Etc/GMT+5", "", "utc"])
def test_policy_service_refuses_a_zone_not_offered(clinic, name):
    with pytest.raises(ValidationError) as refused:
        in_zone(clinic, name)

    assert set(refused.value.message_dict) == {"time_zone"}
    clinic.refresh_from_db()
    assert clinic.time_zone == "UTC"
    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.TENANT_UPDATED).exists()


def test_every_offered_zone_loads():
    names = time_zone_names()

    assert names[0] == "UTC" and "Europe/Zurich" in names and "America/Chicago" in names
    assert all(zoneinfo.ZoneInfo(name) for name in names)


@pytest.mark.django_db
def test_create_tenant_takes_a_zone_and_refuses_an_unknown_one():
    call_command("create_tenant", "east", "--name", "East", "--time-zone", "America/Chicago")

    with pytest.raises(CommandError, match="IANA name"):
        call_command("create_tenant", "west", "--name", "West", "--time-zone", "Pacific/Nowhere")

    assert Tenant.objects.get(slug="east").time_zone == "America/Chicago"
    assert not Tenant.objects.filter(slug="west").exists()
