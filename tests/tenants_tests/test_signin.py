"""Sign-in with password and second factor, as a hospital security officer expects it."""

from __future__ import annotations

import smtplib
import threading

import pytest
from django.conf import settings
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import Action, AuditEvent, Outcome
from portal.mail import MailFailed
from tenants.mfa import backup_codes_issue, second_factor_verify, totp_secret_base32
from tenants.models import BackupCode
from tenants.throttle import KNOWN_DEVICE_COOKIE, throttle_reset
from tests.helpers import (
    PASSWORD,
    TEST_ACTOR,
    current_totp,
    make_member,
    require_postgresql,
    totp_device_for,
)

SESSION = settings.SESSION_COOKIE_NAME


def _sign_in_password(client: Client, user, next_url: str = "") -> object:
    data = {"username": user.email, "password": PASSWORD}
    if next_url:
        data["next"] = next_url
    return client.post("/accounts/login/", data)


def _events(tenant, action):
    return AuditEvent.objects.for_tenant(tenant).filter(action=action)


@pytest.mark.django_db
def test_password_alone_reaches_nothing_but_verification(clinic, radiologist):
    totp_device_for(radiologist)
    client = Client()

    response = _sign_in_password(client, radiologist, next_url="/t/north/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/verify/?next=%2Ft%2Fnorth%2F"
    for url in ["/t/north/", "/t/north/audit/", "/", "/accounts/security/", "/admin/"]:
        blocked = client.get(url)
        assert blocked.status_code == 302, url
        assert blocked["Location"].startswith("/accounts/verify/"), url


@pytest.mark.django_db
def test_staff_without_a_device_is_sent_to_enrolment_first(clinic, radiologist):
    client = Client()

    response = _sign_in_password(client, radiologist)

    assert response["Location"].startswith("/accounts/enrol/")
    assert client.get("/t/north/")["Location"].startswith("/accounts/enrol/")
    assert client.get("/accounts/verify/")["Location"].startswith("/accounts/enrol/")


@pytest.mark.django_db
def test_enrolment_with_the_shown_secret_unlocks_the_clinic(clinic, radiologist):
    client = Client()
    _sign_in_password(client, radiologist, next_url="/t/north/")

    page = client.get("/accounts/enrol/?next=/t/north/")
    device = TOTPDevice.objects.get(user=radiologist, confirmed=False)
    secret = totp_secret_base32(device)
    assert secret.encode() in page.content
    assert b"data:image/svg+xml;base64," in page.content
    done = client.post(
        "/accounts/enrol/",
        {"device_id": device.pk, "code": current_totp(device), "next": "/t/north/"},
    )

    assert done.status_code == 200
    codes = done.context["codes"]
    assert len(codes) == 10
    assert BackupCode.objects.filter(device__user=radiologist).count() == 10
    assert not BackupCode.objects.filter(code_hash__in=codes).exists()  # hashed, not stored
    assert client.get("/t/north/").status_code == 200
    assert (
        _events(clinic, Action.MFA_DEVICE_CONFIRMED).filter(target_id=str(radiologist.pk)).exists()
    )


@pytest.mark.django_db
def test_wrong_enrolment_code_keeps_the_device_unconfirmed(clinic, radiologist):
    client = Client()
    _sign_in_password(client, radiologist)
    client.get("/accounts/enrol/")
    device = TOTPDevice.objects.get(user=radiologist, confirmed=False)

    response = client.post("/accounts/enrol/", {"device_id": device.pk, "code": "000000"})

    assert b"not valid" in response.content
    device.refresh_from_db()
    assert not device.confirmed
    assert client.get("/t/north/").status_code == 302


@pytest.mark.django_db
def test_session_key_changes_at_password_and_again_at_second_factor(clinic, radiologist):
    device = totp_device_for(radiologist)
    client = Client()
    client.get("/accounts/login/")
    client.session.save()
    anonymous_key = client.cookies[SESSION].value

    _sign_in_password(client, radiologist)
    password_key = client.cookies[SESSION].value
    client.post("/accounts/verify/", {"code": current_totp(device)})
    verified_key = client.cookies[SESSION].value

    assert len({anonymous_key, password_key, verified_key}) == 3
    assert client.get("/t/north/").status_code == 200


@pytest.mark.django_db
def test_totp_code_cannot_be_replayed(clinic, radiologist):
    device = totp_device_for(radiologist)
    code = current_totp(device)
    first, second = Client(), Client()
    _sign_in_password(first, radiologist)
    _sign_in_password(second, radiologist)

    ok = first.post("/accounts/verify/", {"code": code})
    replay = second.post("/accounts/verify/", {"code": code})

    assert ok.status_code == 302
    assert replay.status_code == 200
    assert b"already used" in replay.content
    assert second.get("/t/north/").status_code == 302
    failed = _events(clinic, Action.MFA_FAILED).latest("seq")
    assert failed.outcome == Outcome.FAILURE


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_use_of_one_code_succeeds_once():
    require_postgresql()
    from tests.helpers import make_clinic

    clinic = make_clinic("race")
    user = make_member(clinic, "radiologist", email="race@race.example")
    device = totp_device_for(user)
    code = current_totp(device)
    barrier = threading.Barrier(4)
    results: list[str] = []

    def attempt():
        from django.db import connection

        barrier.wait()
        try:
            second_factor_verify(user=user, token=code, actor=TEST_ACTOR)
            results.append("ok")
        except Exception as exc:
            results.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count("ok") == 1
    assert results.count("SecondFactorError") == 3


@pytest.mark.django_db
def test_backup_code_works_once(clinic, radiologist):
    totp_device_for(radiologist)
    codes = backup_codes_issue(user=radiologist, actor=TEST_ACTOR)
    first, second = Client(), Client()
    _sign_in_password(first, radiologist)
    _sign_in_password(second, radiologist)

    used = first.post("/accounts/verify/", {"code": codes[0].upper()})
    again = second.post("/accounts/verify/", {"code": codes[0]})
    other = second.post("/accounts/verify/", {"code": codes[1]})

    assert used.status_code == 302
    assert again.status_code == 200
    assert other.status_code == 302
    event = _events(clinic, Action.MFA_VERIFIED).latest("seq")
    assert event.detail == {"device": "backup_code", "backup_codes_left": 8}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_use_of_one_backup_code_succeeds_once():
    from tests.helpers import make_clinic

    clinic = make_clinic("race-codes")
    user = make_member(clinic, "radiologist", email="codes@race.example")
    code = backup_codes_issue(user=user, actor=TEST_ACTOR)[0]
    if not _concurrent_db():
        pytest.skip("in-memory SQLite serialises everything; the race needs a server database")
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def attempt():
        from django.db import connection

        barrier.wait()
        try:
            second_factor_verify(user=user, token=code, actor=TEST_ACTOR)
            results.append(True)
        except Exception:
            results.append(False)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count(True) == 1


def _concurrent_db() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


@pytest.mark.django_db
def test_wrong_passwords_lock_the_account_for_a_while_then_unlock(clinic, radiologist, settings):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        client.post("/accounts/login/", {"username": radiologist.email, "password": "wrong"})

    locked = _sign_in_password(client, radiologist)

    assert locked.status_code == 429
    assert b"Too many attempts" in locked.content
    assert AuditEvent.objects.unscoped(reason="test").filter(action=Action.SIGNIN_LOCKED).exists()
    from django.core.cache import cache

    cache.clear()  # the lockout window elapsing
    assert _sign_in_password(Client(), radiologist).status_code == 302


@pytest.mark.django_db
def test_a_browser_that_signed_in_before_is_not_locked_out_by_anyone_elses_failures(
    clinic, radiologist, technologist, settings
):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    own = Client()
    assert _sign_in_password(own, radiologist).status_code == 302
    own.post("/accounts/logout/")  # signing out keeps the browser's other cookies
    colleagues_browser = Client()
    assert _sign_in_password(colleagues_browser, technologist).status_code == 302
    colleagues_browser.post("/accounts/logout/")
    for _ in range(3):  # anyone, from anywhere, naming the radiologist
        Client().post("/accounts/login/", {"username": radiologist.email, "password": "wrong"})

    stranger = _sign_in_password(Client(), radiologist)
    colleague = _sign_in_password(colleagues_browser, radiologist)  # known, for another
    forged = Client()
    forged.cookies[KNOWN_DEVICE_COOKIE] = own.cookies[KNOWN_DEVICE_COOKIE].value + "x"
    tampered = _sign_in_password(forged, radiologist)
    returning = _sign_in_password(own, radiologist)

    assert (stranger.status_code, colleague.status_code, tampered.status_code) == (429, 429, 429)
    assert returning.status_code == 302


@pytest.mark.django_db
def test_a_known_browser_still_gets_only_the_accounts_number_of_guesses(
    clinic, radiologist, settings
):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    own = Client()
    assert _sign_in_password(own, radiologist).status_code == 302
    own.post("/accounts/logout/")  # signing out keeps the browser's other cookies
    answers = [
        own.post("/accounts/login/", {"username": radiologist.email, "password": f"guess {n}"})
        for n in range(4)
    ]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert _sign_in_password(own, radiologist).status_code == 429
    cookie = own.cookies[KNOWN_DEVICE_COOKIE]
    assert radiologist.email not in cookie.value and cookie["httponly"]


@pytest.mark.django_db
def test_lifting_a_lockout_releases_the_browser_the_person_locked_out(
    clinic, radiologist, settings
):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    own = Client()
    assert _sign_in_password(own, radiologist).status_code == 302
    own.post("/accounts/logout/")
    for n in range(3):  # the person's own mistypes, on their own workstation
        own.post("/accounts/login/", {"username": radiologist.email, "password": f"typo {n}"})
    assert _sign_in_password(own, radiologist).status_code == 429

    throttle_reset(account=radiologist.email)  # a reset, an admin's unlock, unlock_signin

    assert _sign_in_password(own, radiologist).status_code == 302


def _guesses_arrive_while_the_first_is_checked(monkeypatch, *, send) -> list[str]:
    """Record each password check; while the first is under way, `send` more attempts
    (what requests sent at once do to a count read before the check)."""
    from django.contrib.auth.backends import ModelBackend

    checked: list[str] = []
    real = ModelBackend.authenticate

    def authenticate(backend, request, username=None, password=None, **kwargs):
        checked.append(password)
        if len(checked) == 1:
            send()
        return real(backend, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", authenticate)
    return checked


@pytest.mark.django_db
def test_guesses_sent_at_once_are_checked_no_more_often_than_the_limit(
    clinic, radiologist, settings, monkeypatch
):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    answers: list[int] = []

    def send() -> None:
        for attempt in range(5):
            guess = {"username": radiologist.email, "password": f"guess {attempt}"}
            answers.append(Client().post("/accounts/login/", guess).status_code)

    checked = _guesses_arrive_while_the_first_is_checked(monkeypatch, send=send)

    first = Client().post("/accounts/login/", {"username": radiologist.email, "password": "x"})

    assert len(checked) == 3, answers
    assert answers == [200, 200, 429, 429, 429] and first.status_code == 200
    assert _sign_in_password(Client(), radiologist).status_code == 429


@pytest.mark.django_db
def test_codes_sent_at_once_are_checked_no_more_often_than_the_limit(
    clinic, radiologist, settings, monkeypatch
):
    from tenants import mfa

    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    totp_device_for(radiologist)
    checked: list[str] = []
    real = mfa._verify_totp

    def verify(user, token):
        checked.append(token)
        if len(checked) == 1:
            for _ in range(5):
                with pytest.raises(mfa.SecondFactorError):
                    second_factor_verify(user=radiologist, token="000000", actor=TEST_ACTOR)
        return real(user, token)

    monkeypatch.setattr(mfa, "_verify_totp", verify)

    with pytest.raises(mfa.SecondFactorError):
        second_factor_verify(user=radiologist, token="111111", actor=TEST_ACTOR)

    assert len(checked) == 3


@pytest.mark.django_db
def test_attempts_refused_on_a_locked_account_do_not_count_against_the_address(
    clinic, radiologist, technologist, settings
):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 2
    settings.SIGNIN_IP_FAILURE_LIMIT = 4
    hospital = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(6):  # two guesses, then four refusals
        hospital.post("/accounts/login/", {"username": radiologist.email, "password": "x"})

    colleague = _sign_in_password(Client(REMOTE_ADDR="203.0.113.7"), technologist)

    assert colleague.status_code == 302


@pytest.mark.django_db
def test_colleagues_signing_in_from_one_address_do_not_use_up_its_limit(
    clinic, radiologist, technologist, settings
):
    settings.SIGNIN_IP_FAILURE_LIMIT = 2
    for _ in range(3):
        assert _sign_in_password(Client(REMOTE_ADDR="203.0.113.8"), radiologist).status_code == 302

    assert _sign_in_password(Client(REMOTE_ADDR="203.0.113.8"), technologist).status_code == 302


@pytest.mark.django_db
def test_lockout_looks_the_same_for_unknown_accounts(clinic, radiologist, settings):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 2
    known, unknown = Client(), Client()
    for _ in range(2):
        known.post("/accounts/login/", {"username": radiologist.email, "password": "x"})
        unknown.post("/accounts/login/", {"username": "ghost@north.example", "password": "x"})

    known_response = known.post(
        "/accounts/login/", {"username": radiologist.email, "password": "x"}
    )
    unknown_response = unknown.post(
        "/accounts/login/", {"username": "ghost@north.example", "password": "x"}
    )

    assert known_response.status_code == unknown_response.status_code == 429
    assert known_response.context["form"].errors == unknown_response.context["form"].errors


@pytest.mark.django_db
def test_wrong_password_and_unknown_account_get_the_same_message(clinic, radiologist):
    wrong = Client().post("/accounts/login/", {"username": radiologist.email, "password": "x"})
    ghost = Client().post("/accounts/login/", {"username": "nobody@x.example", "password": "x"})

    assert wrong.status_code == ghost.status_code == 200
    assert wrong.context["form"].errors == ghost.context["form"].errors


@pytest.mark.django_db
def test_per_ip_limit_stops_spraying_across_accounts(clinic, settings):
    settings.SIGNIN_IP_FAILURE_LIMIT = 4
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(4):
        client.post("/accounts/login/", {"username": f"u{i}@x.example", "password": "x"})

    response = client.post("/accounts/login/", {"username": "fresh@x.example", "password": "x"})
    elsewhere = Client(REMOTE_ADDR="198.51.100.1").post(
        "/accounts/login/", {"username": "fresh@x.example", "password": "x"}
    )

    assert response.status_code == 429
    assert elsewhere.status_code == 200


def _lock_out(user, settings) -> None:
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 2
    for _ in range(2):
        Client().post("/accounts/login/", {"username": user.email, "password": "x"})
    assert _sign_in_password(Client(), user).status_code == 429


def _lift_as_admin(client_for, admin, clinic, *members, capture):
    from tests.helpers import membership_of

    with capture(execute=True):
        return client_for(admin).post(
            f"/t/{clinic.slug}/admin/tenants/membership/",
            {
                "action": "unlock_sign_in",
                "_selected_action": [str(membership_of(m, clinic).pk) for m in members],
            },
            follow=True,
        )


@pytest.mark.django_db
def test_tenant_admin_lifts_a_lockout(
    clinic, radiologist, tenant_admin, client_for, settings, django_capture_on_commit_callbacks
):
    _lock_out(radiologist, settings)

    _lift_as_admin(
        client_for, tenant_admin, clinic, radiologist, capture=django_capture_on_commit_callbacks
    )

    assert _sign_in_password(Client(), radiologist).status_code == 302
    event = _events(clinic, Action.THROTTLE_RESET).get(target_id=str(radiologist.pk))
    assert event.outcome == Outcome.SUCCESS


def _also_member_elsewhere(user, other_clinic, *, active: bool) -> None:
    from audit.actors import Actor
    from tenants.services import membership_add

    membership = membership_add(
        tenant=other_clinic, user=user, roles=["radiologist"], actor=Actor.system("test")
    )
    if not active:
        membership.is_active = False
        membership.save()


@pytest.mark.django_db
@pytest.mark.parametrize("elsewhere", ["active member", "former member", "operator"])
def test_a_clinic_admin_cannot_lift_the_lockout_of_an_account_that_reaches_further(
    elsewhere,
    clinic,
    other_clinic,
    radiologist,
    tenant_admin,
    client_for,
    settings,
    django_capture_on_commit_callbacks,
):
    # One account: its lockout guards it for every clinic and, for an operator, the
    # platform. A former membership may be reactivated.
    if elsewhere == "operator":
        radiologist.is_staff = True
        radiologist.save()
    else:
        _also_member_elsewhere(radiologist, other_clinic, active=elsewhere == "active member")
    _lock_out(radiologist, settings)

    response = _lift_as_admin(
        client_for, tenant_admin, clinic, radiologist, capture=django_capture_on_commit_callbacks
    )

    assert _sign_in_password(Client(), radiologist).status_code == 429
    page = response.content.decode()
    assert "Only a platform operator can lift this lockout" in page
    assert "another clinic" not in page  # the same words whatever the reason
    (event,) = _events(clinic, Action.THROTTLE_RESET)
    assert event.outcome == Outcome.DENIED


@pytest.mark.django_db
def test_a_mixed_selection_lifts_some_and_names_the_others(
    clinic,
    other_clinic,
    radiologist,
    technologist,
    tenant_admin,
    client_for,
    settings,
    django_capture_on_commit_callbacks,
):
    _also_member_elsewhere(technologist, other_clinic, active=True)
    _lock_out(radiologist, settings)
    _lock_out(technologist, settings)

    response = _lift_as_admin(
        client_for,
        tenant_admin,
        clinic,
        radiologist,
        technologist,
        capture=django_capture_on_commit_callbacks,
    )

    page = response.content.decode()
    assert "Lockout lifted for 1 member(s)." in page
    assert f"{technologist.email}: Only a platform operator".lower() in page.lower()
    assert _sign_in_password(Client(), radiologist).status_code == 302
    assert _sign_in_password(Client(), technologist).status_code == 429


@pytest.mark.django_db
def test_second_factor_attempts_are_throttled(clinic, radiologist, settings):
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 3
    device = totp_device_for(radiologist)
    client = Client()
    _sign_in_password(client, radiologist)
    for _ in range(3):
        client.post("/accounts/verify/", {"code": "123456"})

    blocked = client.post("/accounts/verify/", {"code": current_totp(device)})

    assert b"Too many attempts" in blocked.content
    assert client.get("/t/north/").status_code == 302
    assert _events(clinic, Action.MFA_FAILED).filter(outcome=Outcome.DENIED).exists()


@pytest.mark.django_db
def test_off_site_next_is_refused(clinic, radiologist):
    device = totp_device_for(radiologist)
    client = Client()

    first = _sign_in_password(client, radiologist, next_url="https://evil.example/phish")
    second = client.post(
        "/accounts/verify/", {"code": current_totp(device), "next": "//evil.example/x"}
    )

    assert "evil.example" not in first["Location"]
    assert second["Location"] == "/"


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_a_signed_in_member_sent_to_the_sign_in_page_as_next_is_sent_home(
    clinic, radiologist, client_for, method
):
    client = client_for(radiologist)

    response = getattr(client, method)("/accounts/login/?next=/accounts/login/")

    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.django_db
def test_forms_enforce_csrf(clinic, radiologist):
    client = Client(enforce_csrf_checks=True)

    without = client.post("/accounts/login/", {"username": radiologist.email, "password": PASSWORD})
    page = client.get("/accounts/login/")
    token = page.context["csrf_token"]
    with_token = client.post(
        "/accounts/login/",
        {"username": radiologist.email, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )

    assert without.status_code == 403
    assert with_token.status_code == 302


@pytest.mark.django_db
def test_logout_requires_post_and_ends_the_server_session(clinic, radiologist, client_for):
    from django.contrib.sessions.models import Session

    client = client_for(radiologist)
    key = client.cookies[SESSION].value

    assert client.get("/accounts/logout/").status_code == 405
    client.post("/accounts/logout/")

    assert not Session.objects.filter(session_key=key).exists()
    assert client.get("/t/north/").status_code == 302


@pytest.mark.django_db
def test_patient_mfa_follows_clinic_policy(clinic, patient):
    optional = _sign_in_password(Client(), patient)

    clinic.mfa_required_roles.add("patient")
    required = _sign_in_password(Client(), patient)

    assert optional["Location"] == "/"
    assert required["Location"].startswith("/accounts/enrol/")


@pytest.mark.django_db
def test_password_reset_mails_a_link_and_requires_second_factor_after(
    clinic, radiologist, django_capture_on_commit_callbacks
):
    device = totp_device_for(radiologist)
    client = Client()

    with django_capture_on_commit_callbacks(execute=True):  # the mail goes after commit
        client.post("/accounts/password-reset/", {"email": radiologist.email})
    link = next(line for line in mail.outbox[0].body.splitlines() if "/password-reset/" in line)
    path = link.split("testserver", 1)[1]
    form_page = client.get(path, follow=True)
    new_password = "a brand new passphrase 77"
    client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new_password, "new_password2": new_password},
    )
    signed_in = client.post(
        "/accounts/login/", {"username": radiologist.email, "password": new_password}
    )

    assert radiologist.email in mail.outbox[0].to
    assert signed_in["Location"].startswith("/accounts/verify/")
    assert client.get("/t/north/").status_code == 302
    assert client.post("/accounts/verify/", {"code": current_totp(device)}).status_code == 302
    assert _events(clinic, Action.PASSWORD_RESET_COMPLETED).exists()


@pytest.mark.django_db
def test_password_reset_for_unknown_email_looks_the_same(db):
    response = Client().post("/accounts/password-reset/", {"email": "ghost@nowhere.example"})

    assert response.status_code == 302
    assert response["Location"] == "/accounts/password-reset/sent/"
    assert mail.outbox == []


@pytest.mark.django_db
def test_the_reset_mail_is_sent_after_the_answer_not_while_the_request_waits(
    clinic, radiologist, django_capture_on_commit_callbacks
):
    # A mail server's round trip inside the request made a known address answer later
    # than an unknown one.
    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        response = Client().post("/accounts/password-reset/", {"email": radiologist.email})
    sent_during_request = len(mail.outbox)
    for callback in after_commit:
        callback()

    assert response["Location"] == "/accounts/password-reset/sent/"
    assert sent_during_request == 0
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [radiologist.email]


class SmtpDown(BaseEmailBackend):
    """A mail server that refuses every message."""

    def send_messages(self, email_messages):
        raise smtplib.SMTPServerDisconnected("the mail server is down")


@pytest.mark.django_db
def test_a_reset_mail_the_server_refuses_is_retried_not_dropped(radiologist, settings):
    from tenants.forms import password_reset_mail

    settings.EMAIL_BACKEND = "tests.tenants_tests.test_signin.SmtpDown"

    # The task retries on this (autoretry_for); swallowed, the mail would be lost.
    with pytest.raises(MailFailed):
        password_reset_mail(user=radiologist, domain="testserver", use_https=False)


@pytest.mark.django_db
def test_password_reset_mails_to_one_account_are_limited_an_hour(
    clinic, radiologist, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        answers = [
            Client().post("/accounts/password-reset/", {"email": radiologist.email.upper()})
            for _ in range(5)
        ]

    assert {a["Location"] for a in answers} == {"/accounts/password-reset/sent/"}
    assert len(mail.outbox) == 3
    throttled = _events(clinic, Action.PASSWORD_RESET_REQUESTED).filter(detail__throttled=True)
    assert throttled.count() == 2


@pytest.mark.django_db
def test_guessing_the_current_password_on_an_open_session_locks_the_account(
    clinic, radiologist, client_for
):
    client = client_for(radiologist)
    new = "quiet lantern river 2026"
    for attempt in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT):
        wrong = {"old_password": f"guess {attempt}", "new_password1": new, "new_password2": new}
        assert client.post("/accounts/password/", wrong).status_code == 200

    right = client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    sign_in = Client().post(
        "/accounts/login/", {"username": radiologist.email, "password": PASSWORD}
    )

    assert right.status_code == 429 and b"Too many attempts" in right.content
    radiologist.refresh_from_db()
    assert radiologist.check_password(PASSWORD)  # unchanged
    assert sign_in.status_code == 429
    assert _events(clinic, Action.SIGNIN_LOCKED).filter(detail__page="password_change").exists()


@pytest.mark.django_db
def test_a_new_password_refused_for_itself_does_not_count_as_a_guess(
    clinic, radiologist, client_for
):
    client = client_for(radiologist)
    for _ in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT + 1):
        short = {"old_password": PASSWORD, "new_password1": "short", "new_password2": "short"}
        assert client.post("/accounts/password/", short).status_code == 200

    assert _sign_in_password(Client(), radiologist).status_code == 302


@pytest.mark.django_db
def test_password_policy_rejects_short_common_and_email_like(clinic, radiologist, client_for):
    client = client_for(radiologist)
    for bad in ["short", "password1234", "radiologist-north"]:
        response = client.post(
            "/accounts/password/",
            {"old_password": PASSWORD, "new_password1": bad, "new_password2": bad},
        )
        assert response.status_code == 200, bad
    good = "quiet lantern river 2026"
    changed = client.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": good, "new_password2": good},
    )
    assert changed.status_code == 302
    assert _events(clinic, Action.PASSWORD_CHANGED).exists()


def _reset_password(client: Client, user, django_capture_on_commit_callbacks, **extra) -> str:
    """Ask for a reset link, follow it and choose a new password; the link mailed."""
    with django_capture_on_commit_callbacks(execute=True):  # the mail goes after commit
        client.post("/accounts/password-reset/", {"email": user.email}, **extra)
    link = next(line for line in mail.outbox[-1].body.splitlines() if "/password-reset/" in line)
    path = "/" + link.strip().split("://", 1)[1].split("/", 1)[1]
    form_page = client.get(path, follow=True)
    new_password = "a brand new passphrase 77"
    client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new_password, "new_password2": new_password},
    )
    return link


@pytest.mark.django_db
def test_a_password_reset_lifts_the_sign_in_lockout_but_not_the_second_factors(
    clinic, radiologist, django_capture_on_commit_callbacks
):
    from tenants.throttle import ThrottleKey, attempt_allowed, register_failure

    otp = ThrottleKey(kind="otp", account=radiologist.email, ip=None)
    signin = ThrottleKey(kind="signin", account=radiologist.email, ip=None)
    for _ in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT):
        register_failure(otp)
        register_failure(signin)

    _reset_password(Client(), radiologist, django_capture_on_commit_callbacks)

    assert attempt_allowed(signin)  # the mailbox proved: the password may be tried
    assert not attempt_allowed(otp)  # the second factor was not


@pytest.mark.django_db
def test_the_reset_link_is_on_the_portals_address_whatever_host_the_request_named(
    clinic, radiologist, django_capture_on_commit_callbacks, settings
):
    settings.ALLOWED_HOSTS = ["portal.example", "other.example"]
    settings.PORTAL_BASE_URL = "https://portal.example/imaging"

    with django_capture_on_commit_callbacks(execute=True):
        Client().post(
            "/accounts/password-reset/", {"email": radiologist.email}, HTTP_HOST="other.example"
        )

    link = next(line for line in mail.outbox[-1].body.splitlines() if "/password-reset/" in line)
    assert link.strip().startswith("https://portal.example/imaging/accounts/password-reset/")
