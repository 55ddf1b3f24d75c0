"""The management commands other tools call: create_tenant and create_user."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import Action, AuditEvent
from tenants.models import Tenant, User
from tests.helpers import PASSWORD, membership_of


def _call(*args, stdin: str | None = None) -> str:
    out = io.StringIO()
    if stdin is not None:
        import sys

        old, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            call_command(*args, stdout=out)
        finally:
            sys.stdin = old
    else:
        call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_tenant_creates_an_audited_clinic():
    out = _call("create_tenant", "west-side", "--name", "West Side Imaging")

    tenant = Tenant.objects.get(slug="west-side")
    assert tenant.name == "West Side Imaging"
    assert "Created clinic west-side" in out
    assert AuditEvent.objects.for_tenant(tenant).filter(action=Action.TENANT_CREATED).exists()


@pytest.mark.django_db
def test_create_tenant_rejects_duplicates_and_bad_slugs(clinic):
    with pytest.raises(CommandError, match="already exists"):
        _call("create_tenant", "north", "--name", "Again")
    with pytest.raises(CommandError, match="lowercase letters"):
        _call("create_tenant", "Bad Slug!", "--name", "Bad")
    with pytest.raises(CommandError, match="name: This field cannot be blank"):
        _call("create_tenant", "blank-name", "--name", "   ")
    assert not Tenant.objects.filter(name__in=["Again", "Bad"]).exists()
    assert not Tenant.objects.filter(slug="blank-name").exists()


@pytest.mark.django_db
def test_create_user_with_password_from_stdin_can_sign_in(clinic):
    out = _call(
        "create_user",
        "Tech@North.example",
        "--tenant",
        "north",
        "--role",
        "technologist",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )

    user = User.objects.get(email="tech@north.example")
    assert membership_of(user, clinic).role_codes == {"technologist"}
    assert "technologist in north" in out
    assert PASSWORD not in out
    assert Client().login(username="tech@north.example", password=PASSWORD)


@pytest.mark.django_db
def test_create_user_rejects_a_weak_password_and_creates_nothing(clinic):
    with pytest.raises(CommandError, match="too short"):
        _call(
            "create_user",
            "weak@north.example",
            "--tenant",
            "north",
            "--role",
            "radiologist",
            "--password-stdin",
            stdin="abc\n",
        )

    assert not User.objects.filter(email="weak@north.example").exists()


@pytest.mark.django_db
def test_create_user_with_totp_prints_a_working_otpauth_uri_last(clinic):
    out = _call(
        "create_user", "rad@north.example", "--tenant", "north", "--role", "radiologist", "--totp"
    )

    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith("otpauth://totp/")
    user = User.objects.get(email="rad@north.example")
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed
    assert parse_qs(urlparse(last_line).query)["secret"]
    assert device.verify_token(f"{totp(device.bin_key):06d}")
    assert (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.MFA_DEVICE_CONFIRMED, target_id=str(user.pk))
        .exists()
    )


def _radiologist_again(user: User, *flags: str) -> list[str]:
    """create_user's arguments for `user`, north's radiologist already."""
    return ["create_user", user.email, "--tenant", "north", "--role", "radiologist", *flags]


def _code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key):06d}"


@pytest.mark.django_db
def test_create_user_totp_again_keeps_the_first_device_and_prints_no_secret(clinic, radiologist):
    first = _call(*_radiologist_again(radiologist, "--totp"))
    device = TOTPDevice.objects.get(user=radiologist)

    out = io.StringIO()
    with pytest.raises(CommandError, match="--replace-totp"):
        call_command(*_radiologist_again(radiologist, "--totp"), stdout=out)

    assert "otpauth://" in first
    assert "otpauth://" not in out.getvalue()
    assert list(TOTPDevice.objects.filter(user=radiologist)) == [device]


@pytest.mark.django_db
def test_create_user_replace_totp_stops_the_lost_secret_and_says_so(clinic, radiologist):
    _call(*_radiologist_again(radiologist, "--totp"))
    lost_key = TOTPDevice.objects.get(user=radiologist).bin_key

    out = _call(*_radiologist_again(radiologist, "--replace-totp"))

    device = TOTPDevice.objects.get(user=radiologist)
    assert device.bin_key != lost_key
    assert parse_qs(urlparse(out.strip().splitlines()[-1]).query)["secret"]
    assert device.verify_token(_code(device))
    event = (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.MFA_DEVICE_CONFIRMED, target_id=str(radiologist.pk))
        .latest("seq")
    )
    assert event.detail == {"device": "totp", "replaced": 1}


@pytest.mark.django_db
def test_create_user_does_not_silently_ignore_a_new_name(clinic, radiologist):
    before = radiologist.full_name

    with pytest.raises(CommandError, match="name is changed in the admin"):
        _call(
            "create_user",
            radiologist.email,
            "--tenant",
            "north",
            "--role",
            "technologist",
            "--full-name",
            "Dr New Name",
        )

    radiologist.refresh_from_db()
    assert radiologist.full_name == before
    assert membership_of(radiologist, clinic).role_codes == {"radiologist"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db
@pytest.mark.parametrize(("again", "created"), [(PASSWORD, True), (PASSWORD + "x", False)])
def test_create_user_asks_a_terminal_for_the_password_twice_unseen(
    clinic, monkeypatch, again, created
):
    import getpass
    import sys

    typed = iter([PASSWORD, again])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(typed))
    monkeypatch.setattr(sys, "stdin", _Terminal(""))
    args = ["create_user", "tty@north.example", "--tenant", "north", "--role", "technologist"]

    if created:
        call_command(*args, "--password-stdin", stdout=io.StringIO())
        assert Client().login(username="tty@north.example", password=PASSWORD)
    else:
        with pytest.raises(CommandError, match="differ"):
            call_command(*args, "--password-stdin", stdout=io.StringIO())
        assert not User.objects.filter(email="tty@north.example").exists()


@pytest.mark.django_db
def test_create_user_adds_a_role_to_an_existing_person(clinic, other_clinic, radiologist):
    _call("create_user", radiologist.email, "--tenant", "south", "--role", "radiologist")
    _call("create_user", radiologist.email, "--tenant", "north", "--role", "privacy_officer")

    assert membership_of(radiologist, other_clinic).role_codes == {"radiologist"}
    assert membership_of(radiologist, clinic).role_codes == {"radiologist", "privacy_officer"}


@pytest.mark.django_db
def test_create_user_errors_are_specific(clinic):
    with pytest.raises(CommandError, match="No active clinic"):
        _call("create_user", "a@b.example", "--tenant", "nowhere", "--role", "radiologist")
    with pytest.raises(CommandError, match="invalid choice"):
        _call("create_user", "a@b.example", "--tenant", "north", "--role", "janitor")
    with pytest.raises(CommandError, match="Enter a valid email"):
        _call("create_user", "not-an-email", "--tenant", "north", "--role", "radiologist")
    assert not User.objects.filter(email__in=["a@b.example", "not-an-email"]).exists()


@pytest.mark.django_db
def test_bootstrap_demo_creates_one_user_per_role_once(settings):
    settings.DEBUG = True
    first = _call("bootstrap_demo")
    second = _call("bootstrap_demo")

    demo = Tenant.objects.get(slug="demo")
    assert "radiologist@demo-clinic.example" in first
    assert "already set up" in second
    roles = {
        code
        for user in User.objects.filter(email__endswith="@demo-clinic.example", is_staff=False)
        for code in membership_of(user, demo).role_codes
    }
    assert roles == {
        "tenant_admin",
        "radiologist",
        "technologist",
        "front_desk",
        "referring_physician",
        "privacy_officer",
        "patient",
    }


@pytest.mark.django_db
def test_bootstrap_demo_records_the_operator_it_creates(settings):
    settings.DEBUG = True
    _call("bootstrap_demo")

    operator = User.objects.get(email="operator@demo-clinic.example")
    event = AuditEvent.objects.unscoped(reason="the platform chain").get(
        chain__key="platform", action=Action.USER_CREATED, target_id=str(operator.pk)
    )
    assert operator.is_superuser
    assert event.detail == {"operator": True}


@pytest.mark.django_db
def test_create_operator_makes_an_audited_superuser_who_can_sign_in():
    out = _call("create_operator", "Ops@Platform.example", "--password-stdin", stdin=PASSWORD)

    operator = User.objects.get(email="ops@platform.example")
    assert operator.is_superuser and operator.is_staff
    assert not operator.memberships.exists()
    assert str(operator.pk) in out and PASSWORD not in out
    assert Client().login(username="ops@platform.example", password=PASSWORD)
    assert (
        AuditEvent.objects.unscoped(reason="the platform chain")
        .filter(chain__key="platform", action=Action.USER_CREATED, target_id=str(operator.pk))
        .exists()
    )


@pytest.mark.django_db
def test_create_operator_refuses_a_taken_address_and_a_weak_password(radiologist):
    with pytest.raises(CommandError, match="already exists"):
        _call("create_operator", radiologist.email)
    with pytest.raises(CommandError, match="too short"):
        _call("create_operator", "ops@platform.example", "--password-stdin", stdin="abc\n")

    radiologist.refresh_from_db()
    assert not radiologist.is_superuser
    assert not User.objects.filter(email="ops@platform.example").exists()


@pytest.mark.django_db
def test_bootstrap_demo_refuses_a_deployment_without_debug(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG is off"):
        _call("bootstrap_demo")
    assert not Tenant.objects.filter(slug="demo").exists()
    assert not User.objects.exists()

    assert "Demo clinic created" in _call("bootstrap_demo", "--yes-demo")


@pytest.mark.django_db
def test_bootstrap_demo_over_a_taken_address_says_so_and_creates_nothing(clinic, settings):
    settings.DEBUG = True
    _call(
        "create_user",
        "radiologist@demo-clinic.example",
        "--tenant",
        "north",
        "--role",
        "radiologist",
    )

    with pytest.raises(CommandError, match=r"already exists\. Nothing was created"):
        _call("bootstrap_demo")

    assert not Tenant.objects.filter(slug="demo").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("email", "full_name"),
    [
        (f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 63}.example", ""),
        ("long@north.example", "N" * 151),
    ],
)
def test_create_user_refuses_what_the_columns_cannot_hold(clinic, email, full_name):
    with pytest.raises(CommandError, match="at most"):
        _call(
            "create_user",
            email,
            "--tenant",
            "north",
            "--role",
            "radiologist",
            "--full-name",
            full_name,
        )

    assert not User.objects.filter(email__iexact=email).exists()


@pytest.mark.django_db
def test_unlock_signin_says_it_cannot_reach_counts_kept_per_process(clinic, radiologist, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

    with pytest.raises(CommandError, match="REDIS_URL"):
        _call("unlock_signin", radiologist.email)

    assert not AuditEvent.objects.for_tenant(clinic).filter(action=Action.THROTTLE_RESET).exists()


def _locked_out(user, settings, tmp_path) -> Client:
    # A cache every process shares, as in production (REDIS_URL): the command reaches it.
    backend = "django.core.cache.backends.filebased.FileBasedCache"
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": str(tmp_path / "cache")}}
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 2
    for _ in range(2):
        Client().post("/accounts/login/", {"username": user.email, "password": "x"})
    return Client()


def _signs_in(client: Client, user) -> bool:
    answer = client.post("/accounts/login/", {"username": user.email, "password": PASSWORD})
    return answer.status_code == 302


@pytest.mark.django_db
def test_unlock_signin_lifts_a_pasted_address_and_the_clinic_sees_it(
    clinic, radiologist, settings, tmp_path
):
    client = _locked_out(radiologist, settings, tmp_path)
    assert not _signs_in(client, radiologist)

    out = _call("unlock_signin", f"  {radiologist.email.upper()} ")

    assert "Lockout lifted" in out
    assert _signs_in(client, radiologist)
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.THROTTLE_RESET)
    assert event.target_id == str(radiologist.pk)


@pytest.mark.django_db
def test_unlock_signin_lifts_nothing_when_it_cannot_be_audited(
    clinic, radiologist, settings, monkeypatch, tmp_path
):
    from django.db import DatabaseError

    from audit import recorder

    client = _locked_out(radiologist, settings, tmp_path)

    def audit_fails(**kwargs):
        raise DatabaseError("the audit append failed")

    monkeypatch.setattr(recorder, "record_many", audit_fails)
    with pytest.raises(CommandError, match="Nothing was lifted"):
        _call("unlock_signin", radiologist.email)
    monkeypatch.undo()

    assert not _signs_in(client, radiologist)


@pytest.mark.django_db
def test_a_command_event_names_the_person_who_ran_it_behind_sudo(clinic, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "alice")
    _call("create_api_token", "--tenant", "north", "--name", "RIS", "--scopes", "studies:read")
    monkeypatch.setenv("SUDO_USER", "b" * 80)
    _call("create_tenant", "east", "--name", "East")

    minted = AuditEvent.objects.for_tenant(clinic).get(action=Action.API_TOKEN_CREATED)
    created = AuditEvent.objects.for_tenant(Tenant.objects.get(slug="east")).get(
        action=Action.TENANT_CREATED
    )
    assert minted.actor_type == "system"
    assert minted.actor_id == "cli.create_api_token@alice"
    assert created.actor_id == ("cli.create_tenant@" + "b" * 80)[:64]
