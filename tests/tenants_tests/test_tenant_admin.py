"""The tenant admin site: one clinic's members and policy, audited, nothing else."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from audit.models import Action, AuditEvent
from tenants.models import Membership, Role, Tenant
from tenants.services import MembershipError, membership_update
from tests.helpers import (
    TEST_ACTOR,
    make_clinic,
    make_member,
    membership_of,
    require_postgresql,
)


def _events(tenant, action):
    return AuditEvent.objects.for_tenant(tenant).filter(action=action)


@pytest.mark.django_db
def test_member_list_shows_only_own_clinic(
    clinic, other_clinic, tenant_admin, radiologist, client_for
):
    make_member(other_clinic, "radiologist", email="hidden@south.example")

    response = client_for(tenant_admin).get("/t/north/admin/tenants/membership/")

    assert response.status_code == 200
    assert radiologist.email.encode() in response.content
    assert b"hidden@south.example" not in response.content
    assert set(response.context["cl"].queryset) == set(Membership.objects.for_tenant(clinic))


@pytest.mark.django_db
def test_member_page_is_titled_by_email_not_by_id(clinic, tenant_admin, radiologist, client_for):
    membership = membership_of(radiologist, clinic)

    page = client_for(tenant_admin).get(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/"
    )

    assert page.status_code == 200
    title = page.content.split(b"<title>")[1].split(b"</title>")[0]
    assert radiologist.email.encode() in title
    assert str(membership.pk).encode() not in page.content.split(b'<div id="content"')[0]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/t/north/admin/", "/admin/"])
def test_admin_pages_name_an_icon_so_browsers_do_not_ask_for_one(
    clinic, tenant_admin, platform_operator, client_for, path
):
    user = tenant_admin if path.startswith("/t/") else platform_operator

    page = client_for(user).get(path)

    assert page.status_code == 200
    assert b'<link rel="icon" href="data:,">' in page.content


@pytest.mark.django_db
def test_policy_list_shows_only_own_clinic(clinic, other_clinic, tenant_admin, client_for):
    response = client_for(tenant_admin).get("/t/north/admin/tenants/tenant/")

    assert [t.pk for t in response.context["cl"].queryset] == [clinic.pk]
    assert b"South Radiology" not in response.content


@pytest.mark.django_db
def test_role_change_is_audited_with_what_changed(clinic, tenant_admin, radiologist, client_for):
    membership = membership_of(radiologist, clinic)

    response = client_for(tenant_admin).post(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/",
        {"roles": ["radiologist", "privacy_officer"], "is_active": "on"},
    )

    assert response.status_code == 302
    assert membership_of(radiologist, clinic).role_codes == {"radiologist", "privacy_officer"}
    event = _events(clinic, Action.MEMBERSHIP_ROLES_CHANGED).get(target_id=str(membership.pk))
    assert event.detail["added"] == ["privacy_officer"]
    assert event.detail["removed"] == []


@pytest.mark.django_db
def test_deactivating_a_member_is_audited_and_locks_them_out(
    clinic, tenant_admin, radiologist, client_for
):
    membership = membership_of(radiologist, clinic)

    client_for(tenant_admin).post(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/", {"roles": ["radiologist"]}
    )

    assert (
        _events(clinic, Action.MEMBERSHIP_DEACTIVATED).filter(target_id=str(membership.pk)).exists()
    )
    assert client_for(radiologist).get("/t/north/").status_code == 404


@pytest.mark.django_db
def test_last_tenant_admin_cannot_remove_their_own_admin_role(client_for):
    solo = make_clinic("solo")
    admin = make_member(solo, "tenant_admin", "radiologist")
    membership = membership_of(admin, solo)

    response = client_for(admin).post(
        f"/t/solo/admin/tenants/membership/{membership.pk}/change/",
        {"roles": ["radiologist"], "is_active": "on"},
    )

    assert response.status_code == 200
    assert b"at least one active tenant admin" in response.content
    assert membership_of(admin, solo).role_codes == {"tenant_admin", "radiologist"}


@pytest.mark.django_db
def test_an_admin_cannot_give_themselves_a_role(clinic, tenant_admin, client_for):
    membership = membership_of(tenant_admin, clinic)

    response = client_for(tenant_admin).post(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/",
        {"roles": ["tenant_admin", "radiologist"], "is_active": "on"},
    )

    assert response.status_code == 200
    assert b"You cannot give yourself a role" in response.content
    assert membership_of(tenant_admin, clinic).role_codes == {"tenant_admin"}
    assert not _events(clinic, Action.MEMBERSHIP_ROLES_CHANGED).exists()


@pytest.mark.django_db
def test_another_admin_gives_an_admin_a_role_and_an_admin_may_drop_their_own(
    clinic, tenant_admin, client_for
):
    colleague = make_member(clinic, "tenant_admin", "radiologist", email="second@north.example")
    membership = membership_of(tenant_admin, clinic)
    url = f"/t/north/admin/tenants/membership/{membership.pk}/change/"

    given = client_for(colleague).post(
        url, {"roles": ["tenant_admin", "radiologist"], "is_active": "on"}
    )
    dropped = client_for(colleague).post(
        f"/t/north/admin/tenants/membership/{membership_of(colleague, clinic).pk}/change/",
        {"roles": ["tenant_admin"], "is_active": "on"},
    )

    assert given.status_code == dropped.status_code == 302
    assert membership_of(tenant_admin, clinic).role_codes == {"tenant_admin", "radiologist"}
    assert membership_of(colleague, clinic).role_codes == {"tenant_admin"}


@pytest.mark.django_db
def test_other_clinics_member_is_404_in_the_change_view(
    clinic, other_clinic, tenant_admin, client_for
):
    foreign = membership_of(make_member(other_clinic, "radiologist"), other_clinic)

    get = client_for(tenant_admin).get(f"/t/north/admin/tenants/membership/{foreign.pk}/change/")
    post = client_for(tenant_admin).post(
        f"/t/north/admin/tenants/membership/{foreign.pk}/change/",
        {"roles": ["tenant_admin"], "is_active": "on"},
    )

    assert get.status_code == post.status_code == 404
    assert membership_of(foreign.user, other_clinic).role_codes == {"radiologist"}


@pytest.mark.django_db
def test_policy_change_is_audited_and_staff_mfa_stays_required(clinic, tenant_admin, client_for):
    response = client_for(tenant_admin).post(
        f"/t/north/admin/tenants/tenant/{clinic.pk}/change/",
        {
            "name": "North Imaging Centre",
            "patients_require_mfa": "on",
            "session_idle_minutes": 20,
            "session_absolute_hours": 10,
            "step_up_minutes": 5,
            "share_link_default_days": 7,
            "share_link_max_days": 14,
            "share_link_max_uses": "",
            "time_zone": "UTC",
        },
    )

    assert response.status_code == 302
    clinic.refresh_from_db()
    assert clinic.name == "North Imaging Centre"
    assert clinic.session_idle_minutes == 20
    required = set(clinic.mfa_required_roles.values_list("code", flat=True))
    assert required == set(Role.objects.values_list("code", flat=True))
    event = _events(clinic, Action.TENANT_UPDATED).latest("seq")
    assert "mfa_required_roles" in event.detail["fields"]
    assert "session_idle_minutes" in event.detail["fields"]
    changes = event.detail["changes"]  # what the policy was and became, to rebuild it later
    assert changes["session_idle_minutes"] == {"from": 15, "to": 20}
    assert changes["name"] == {"from": "North Imaging", "to": "North Imaging Centre"}
    assert "patient" in changes["mfa_required_roles"]["to"]
    assert "patient" not in changes["mfa_required_roles"]["from"]


@pytest.mark.django_db
def test_the_log_names_the_viewer_origins_allowed_and_withdrawn(clinic, tenant_admin, client_for):
    url = f"/t/north/admin/tenants/tenant/{clinic.pk}/change/"
    client = client_for(tenant_admin)
    client.post(
        url, {**VALID_POLICY, "cors_allowed_origins": "https://a.example\nhttps://b.example"}
    )

    client.post(
        url, {**VALID_POLICY, "cors_allowed_origins": "https://b.example/\nhttps://c.example"}
    )

    event = _events(clinic, Action.TENANT_UPDATED).latest("seq")
    assert event.detail["changes"]["cors_allowed_origins"] == {
        "added": ["https://c.example"],
        "removed": ["https://a.example"],
    }


VALID_POLICY = {
    "name": "North",
    "session_idle_minutes": 15,
    "session_absolute_hours": 12,
    "step_up_minutes": 10,
    "share_link_default_days": 7,
    "share_link_max_days": 30,
    "time_zone": "UTC",
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "invalid",
    [
        {"share_link_default_days": 30, "share_link_max_days": 7},
        {"share_link_max_uses": "0"},  # every link used up before its first visit
        {"share_link_max_uses": "100001"},  # more than any link may allow
    ],
)
def test_invalid_policy_is_rejected_and_changes_nothing(clinic, tenant_admin, client_for, invalid):
    response = client_for(tenant_admin).post(
        f"/t/north/admin/tenants/tenant/{clinic.pk}/change/", {**VALID_POLICY, **invalid}
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    clinic.refresh_from_db()
    assert clinic.name == "North Imaging" and clinic.share_link_max_uses is None
    assert not _events(clinic, Action.TENANT_UPDATED).exists()


@pytest.mark.django_db
def test_tenant_admin_cannot_edit_slug_status_or_storage(clinic, tenant_admin, client_for):
    client_for(tenant_admin).post(
        f"/t/north/admin/tenants/tenant/{clinic.pk}/change/",
        {
            "name": "North Imaging",
            "slug": "hijack",
            "status": "suspended",
            "storage_backend": "s3",
            "session_idle_minutes": 15,
            "session_absolute_hours": 12,
            "step_up_minutes": 10,
            "share_link_default_days": 7,
            "share_link_max_days": 30,
            "time_zone": "UTC",
        },
    )

    clinic.refresh_from_db()
    assert (clinic.slug, clinic.status, clinic.storage_backend) == ("north", "active", "filesystem")


@pytest.mark.django_db
def test_platform_admin_lists_clinics_but_not_clinic_people(
    clinic, radiologist, patient, platform_operator, client_for
):
    client = client_for(platform_operator)

    clinics = client.get("/admin/tenants/tenant/")
    people = client.get("/admin/tenants/user/")

    assert b"North Imaging" in clinics.content
    assert people.status_code == 200
    assert patient.email.encode() not in people.content
    assert radiologist.email.encode() not in people.content
    assert client.get("/admin/tenants/membership/").status_code == 404


@pytest.mark.django_db
def test_platform_admin_creates_a_clinic_through_the_service(platform_operator, client_for):
    response = client_for(platform_operator).post(
        "/admin/tenants/tenant/add/",
        {
            "name": "East",
            "slug": "east",
            "time_zone": "America/Chicago",
            "status": "active",
            "storage_backend": "filesystem",
        },
    )

    assert response.status_code == 302
    east = Tenant.objects.get(slug="east")
    assert east.time_zone == "America/Chicago"
    assert _events(east, Action.TENANT_CREATED).exists()


def _platform_change(client, tenant, **changes):
    fields = {
        "name": tenant.name,
        "time_zone": tenant.time_zone,
        "status": tenant.status,
        "storage_backend": tenant.storage_backend,
        "storage_bucket": tenant.storage_bucket,
        "storage_region": tenant.storage_region,
    }
    return client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", {**fields, **changes})


@pytest.mark.django_db
def test_the_platform_cannot_move_a_clinics_storage_once_it_holds_images(
    clinic, platform_operator, client_for
):
    from tests.imaging_tests.helpers import ingest, synthetic_ct

    ingest(clinic, synthetic_ct(slices=1, size=16)[0])

    response = _platform_change(
        client_for(platform_operator),
        clinic,
        name="North Imaging AG",
        storage_backend="s3",
        storage_bucket="elsewhere",
    )

    assert response.status_code == 302
    clinic.refresh_from_db()
    assert clinic.name == "North Imaging AG"
    assert (clinic.storage_backend, clinic.storage_bucket) == ("filesystem", "")
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.ADMIN_ACTION).latest("seq")
    assert event.detail["fields"] == ["name"]


@pytest.mark.django_db
def test_the_platform_may_set_an_empty_clinics_storage(platform_operator, client_for):
    empty = make_clinic("east", "East")

    response = _platform_change(
        client_for(platform_operator), empty, storage_backend="s3", storage_bucket="east-images"
    )

    assert response.status_code == 302
    empty.refresh_from_db()
    assert (empty.storage_backend, empty.storage_bucket) == ("s3", "east-images")
    event = AuditEvent.objects.for_tenant(empty).filter(action=Action.ADMIN_ACTION).latest("seq")
    assert event.detail["fields"] == ["storage_backend", "storage_bucket"]


@pytest.mark.django_db
def test_clinic_staff_cannot_use_the_platform_admin(tenant_admin, client_for):
    response = client_for(tenant_admin).get("/admin/tenants/tenant/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_tenant_admin_creates_shows_once_and_revokes_api_tokens(clinic, client_for):
    from tenants.models import ApiToken

    # The read scopes need a role that sees the studies: administration alone does not.
    admin_technologist = make_member(clinic, "tenant_admin", "technologist")
    client = client_for(admin_technologist)
    created = client.post(
        "/t/north/admin/tenants/apitoken/add/",
        {"name": "RIS", "scopes": ["dicomweb:read", "studies:read"], "expires_days": "30"},
    )

    token = ApiToken.objects.for_tenant(clinic).get()
    plaintext = created.context["plaintext"]
    assert plaintext.startswith(f"ptk_{token.prefix}_")
    assert plaintext.encode() in created.content
    assert plaintext not in str(client.cookies)
    assert token.secret_hash not in plaintext
    assert plaintext.encode() not in client.get("/t/north/admin/tenants/apitoken/").content

    client.post(
        "/t/north/admin/tenants/apitoken/",
        {"action": "revoke", "_selected_action": [str(token.pk)]},
    )

    token.refresh_from_db()
    assert token.revoked_at is not None
    actions = set(AuditEvent.objects.for_tenant(clinic).values_list("action", flat=True))
    assert {Action.API_TOKEN_CREATED, Action.API_TOKEN_REVOKED} <= actions


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_admins_revoke_action_revokes_a_tokens_links_in_one_transaction(clinic, client_for):
    """The admin runs actions outside a transaction; on PostgreSQL, locking the token's
    links needs one (on SQLite the lock is not taken at all)."""
    from sharing.models import ShareLink
    from tenants.models import ApiToken
    from tests.imaging_tests.helpers import ingest_study, synthetic_ct
    from tests.sharing_tests.test_share_oversight import partner_link, partner_token

    require_postgresql()
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    token, raw = partner_token(clinic)
    link_id, _ = partner_link(raw, study)
    admin = make_member(clinic, "tenant_admin")

    response = client_for(admin).post(
        "/t/north/admin/tenants/apitoken/",
        {"action": "revoke", "_selected_action": [str(token.pk)]},
    )

    assert response.status_code == 302
    assert ApiToken.objects.for_tenant(clinic).get().revoked_at is not None
    assert ShareLink.objects.for_tenant(clinic).get(pk=link_id).revoked_at is not None
    events = AuditEvent.objects.for_tenant(clinic).values_list("action", flat=True)
    assert Action.API_TOKEN_REVOKED in set(events)


@pytest.mark.django_db
def test_create_api_token_command_prints_the_token_last(clinic, capsys):
    from django.core.management import call_command

    from tenants.models import ApiToken

    call_command(
        "create_api_token",
        "--tenant",
        "north",
        "--name",
        "AI vendor",
        "--scopes",
        "dicomweb:read,dicomweb:write",
        "--expires-days",
        "7",
    )

    last = capsys.readouterr().out.strip().splitlines()[-1]
    token = ApiToken.objects.for_tenant(clinic).get()
    assert last.startswith(f"ptk_{token.prefix}_")
    assert token.scopes == ["dicomweb:read", "dicomweb:write"]
    assert token.expires_at is not None


@pytest.mark.django_db
def test_create_api_token_rejects_unknown_scopes(clinic):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown or missing scopes: admin:all"):
        call_command(
            "create_api_token", "--tenant", "north", "--name", "x", "--scopes", "admin:all"
        )


@pytest.mark.django_db
def test_member_list_leaves_out_patients_portal_accounts(
    clinic, tenant_admin, radiologist, patient, client_for
):
    client = client_for(tenant_admin)

    listed = client.get("/t/north/admin/tenants/membership/")
    searched = client.get("/t/north/admin/tenants/membership/", {"q": patient.email})
    patient_page = client.get(
        f"/t/north/admin/tenants/membership/{membership_of(patient, clinic).pk}/change/"
    )

    assert radiologist.email.encode() in listed.content
    assert patient.email.encode() not in listed.content
    assert list(searched.context["cl"].queryset) == []
    assert patient_page.status_code == 404


@pytest.mark.django_db
def test_a_patient_who_joined_the_staff_is_listed_as_staff(clinic, tenant_admin, client_for):
    both = make_member(clinic, "patient", "technologist", email="both@north.example")

    listed = client_for(tenant_admin).get("/t/north/admin/tenants/membership/")

    assert both.email.encode() in listed.content


@pytest.mark.django_db
def test_administration_does_not_learn_which_colleagues_are_patients(
    clinic, tenant_admin, client_for
):
    both = make_member(clinic, "patient", "technologist", email="both@north.example")
    membership = membership_of(both, clinic)
    client = client_for(tenant_admin)
    url = f"/t/north/admin/tenants/membership/{membership.pk}/change/"

    listed = client.get("/t/north/admin/tenants/membership/").content.decode()
    filtered = client.get("/t/north/admin/tenants/membership/", {"role": "patient"})
    form = client.get(url).content.decode()
    saved = client.post(url, {"roles": [_role_pk("radiologist")], "is_active": "on"})

    row = next(line for line in listed.splitlines() if "both@north.example" in line)
    assert "Technologist" in row and "Patient" not in row
    assert "?role=patient" not in listed and "roles__" not in listed
    assert both.email in filtered.content.decode()  # not a filter: the list as it was
    assert 'value="patient"' not in form and ">Patient<" not in form
    assert saved.status_code == 302
    assert membership_of(both, clinic).role_codes == {"patient", "radiologist"}


@pytest.mark.django_db
def test_an_action_on_a_forged_id_is_a_message_and_changes_nothing(
    clinic, tenant_admin, client_for
):
    from tenants.models import ApiToken
    from tenants.tokens import api_token_create

    api_token_create(
        tenant=clinic, name="RIS", scopes=["dicomweb:read"], actor=TEST_ACTOR, now=timezone.now()
    )
    token = ApiToken.objects.for_tenant(clinic).get()
    client = client_for(tenant_admin)

    response = client.post(
        "/t/north/admin/tenants/apitoken/",
        {"action": "revoke", "index": "0", "_selected_action": [str(token.pk), "nope"]},
        follow=True,
    )

    assert response.status_code == 200
    assert b"not a row&#x27;s id" in response.content
    assert ApiToken.objects.for_tenant(clinic).get().revoked_at is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        {"user__email__regex": "("},
        {"created_at__regex": "["},
        {"is_active__exact": "\x00"},
    ],
)
def test_a_filter_the_list_does_not_offer_is_a_400(tenant_admin, client_for, query):
    response = client_for(tenant_admin).get("/t/north/admin/tenants/membership/", query)

    assert response.status_code == 400


@pytest.mark.django_db
def test_the_filters_the_list_offers_still_work(clinic, tenant_admin, radiologist, client_for):
    response = client_for(tenant_admin).get(
        "/t/north/admin/tenants/membership/",
        {"role": "radiologist", "is_active__exact": 1},
    )

    assert response.status_code == 200
    assert [m.user for m in response.context["cl"].queryset] == [radiologist]


@pytest.mark.django_db
@pytest.mark.parametrize("query", [{"name__regex": "["}, {"slug": "\x00"}])
def test_the_platform_admin_refuses_filters_it_does_not_offer(platform_operator, client_for, query):
    response = client_for(platform_operator).get("/admin/tenants/tenant/", query)

    assert response.status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["/t/north/admin", "/admin"])
def test_the_admins_password_change_is_the_portals_audited_page(
    tenant_admin, platform_operator, client_for, prefix
):
    user = tenant_admin if prefix.startswith("/t/") else platform_operator

    response = client_for(user).get(f"{prefix}/password_change/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/password/"


def _blocked_on_a_lock(*, seconds: float) -> bool:
    """Whether another connection waits on a row lock within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_admins_removing_each_other_at_once_leave_one_admin():
    # Each change alone is allowed (the other admin remains); made at the same moment,
    # the second must see the first and be refused, or the clinic is left with none.
    require_postgresql()
    clinic = make_clinic("pair")
    first, second = (
        membership_of(make_member(clinic, "tenant_admin", email=f"{n}@pair.example"), clinic)
        for n in ("first", "second")
    )
    first_changed, first_may_commit = threading.Event(), threading.Event()
    outcomes: dict[str, str] = {}

    def remove(membership, name, *, hold=False):
        try:
            with transaction.atomic():
                membership_update(
                    membership=Membership.objects.for_tenant(clinic).get(pk=membership.pk),
                    roles={"radiologist"},
                    is_active=True,
                    actor=TEST_ACTOR,
                )
                if hold:
                    first_changed.set()
                    first_may_commit.wait(timeout=30)
            outcomes[name] = "changed"
        except MembershipError:
            outcomes[name] = "refused"
        finally:
            connection.close()

    one = threading.Thread(target=remove, args=(first, "first"), kwargs={"hold": True})
    one.start()
    assert first_changed.wait(timeout=30)
    two = threading.Thread(target=remove, args=(second, "second"))
    two.start()
    _blocked_on_a_lock(seconds=5)  # with the lock the second waits here; without, it ends
    first_may_commit.set()
    one.join(timeout=30)
    two.join(timeout=30)

    assert outcomes == {"first": "changed", "second": "refused"}
    admins = Membership.objects.for_tenant(clinic).filter(
        is_active=True, roles__code="tenant_admin"
    )
    assert list(admins) == [Membership.objects.for_tenant(clinic).get(pk=second.pk)]


def _role_pk(code: str) -> int:
    from tenants.models import Role

    return Role.objects.get(code=code).pk
