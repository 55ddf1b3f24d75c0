"""Sign-in lockout, idle sessions, authenticator enrolment and admin filters hold up
against the spellings, polls, second sessions and query strings an attacker picks."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import Action, AuditEvent
from tenants.mfa import totp_secret_base32
from tenants.models import ApiToken, Membership
from tenants.sessions import IDLE_LIMIT, LAST_SEEN_AT
from tenants.throttle import account_identity, throttle_reset
from tenants.tokens import api_token_create
from tests.helpers import PASSWORD, TEST_ACTOR, current_totp
from tests.imaging_tests.helpers import ingest_study, synthetic_ct

FULLWIDTH_R = "\uff52"  # FULLWIDTH LATIN SMALL LETTER R: NFKC makes it "r"


def _sign_in(client: Client, username: str, password: str = PASSWORD):
    return client.post("/accounts/login/", {"username": username, "password": password})


# --- Lockout: one counter per account, whatever its spelling ----------------------------


def _fail_until_locked(email: str, settings) -> None:
    for _ in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT):
        _sign_in(Client(), email, "wrong password")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "spelling",
    [
        FULLWIDTH_R + "adiologist@north.example",
        "RADIOLOGIST@NORTH.EXAMPLE",
        "  " + FULLWIDTH_R.upper() + "adiologist@north.example ",
        # PostgreSQL's case-insensitive lookup (UPPER) signs this spelling in.
        "rad\u0131olog\u0131st@north.example",
        # The form strips the name: padding past the longest address is the same account.
        " " * 300 + "radiologist@north.example",
    ],
)
def test_another_spelling_of_a_locked_account_is_still_locked_out(
    clinic, radiologist, settings, spelling
):
    _fail_until_locked(radiologist.email, settings)

    response = _sign_in(Client(), spelling)

    assert response.status_code == 429
    assert b"Too many attempts" in response.content


@pytest.mark.django_db
def test_failures_under_other_spellings_count_against_the_same_account(
    clinic, radiologist, settings
):
    for _ in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT):
        _sign_in(Client(), FULLWIDTH_R + "adiologist@north.example", "wrong password")

    response = _sign_in(Client(), radiologist.email)

    assert response.status_code == 429


@pytest.mark.django_db
def test_unlocking_the_stored_email_lifts_a_lockout_earned_under_another_spelling(
    clinic, radiologist, settings
):
    for _ in range(settings.SIGNIN_ACCOUNT_FAILURE_LIMIT):
        _sign_in(Client(), FULLWIDTH_R + "adiologist@north.example", "wrong password")

    throttle_reset(account=radiologist.email)

    assert _sign_in(Client(), FULLWIDTH_R + "adiologist@north.example").status_code == 302


def test_an_overlong_sign_in_name_is_cut_before_it_is_normalised():
    # U+FDFA grows eighteenfold under NFKC: 32 MB of it cost seconds and a gigabyte.
    expanding = "\ufdfa" * 1_000_000

    identity = account_identity(expanding)

    assert len(identity) <= 255 * 18
    assert identity == account_identity(expanding[:255])


# --- Idle timeout: the viewer's background poll is not activity -------------------------


def _age_idle_clock(client: Client, seconds: float) -> None:
    session = client.session
    session[LAST_SEEN_AT] = time.time() - seconds
    session.save()


def _let_time_pass(client: Client, seconds: float) -> None:
    session = client.session
    session[LAST_SEEN_AT] -= seconds
    session.save()


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16))


def _access_url(study) -> str:
    return f"/t/{study.tenant.slug}/dicomweb/studies/{study.study_uid}/access"


@pytest.mark.django_db
def test_the_viewers_access_poll_does_not_keep_an_idle_session_alive(
    clinic, radiologist, client_for, study
):
    client = client_for(radiologist)
    idle = client.session[IDLE_LIMIT]
    _age_idle_clock(client, idle - 5)
    last_seen = client.session[LAST_SEEN_AT]

    poll = client.get(_access_url(study))
    unchanged = client.session[LAST_SEEN_AT]
    _let_time_pass(client, 10)
    page = client.get("/t/north/")

    assert poll.status_code == 204
    assert unchanged == last_seen
    assert page.status_code == 302
    assert page["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_an_access_poll_reporting_the_readers_input_counts_as_activity(
    clinic, radiologist, client_for, study
):
    client = client_for(radiologist)
    _age_idle_clock(client, client.session[IDLE_LIMIT] - 5)
    before = client.session[LAST_SEEN_AT]

    poll = client.get(_access_url(study) + "?active=1")

    assert poll.status_code == 204
    assert client.session[LAST_SEEN_AT] > before + 60


@pytest.mark.django_db
def test_the_access_poll_of_an_idled_out_session_is_refused(clinic, radiologist, client_for, study):
    client = client_for(radiologist)
    _age_idle_clock(client, client.session[IDLE_LIMIT] + 1)

    poll = client.get(_access_url(study))

    assert poll.status_code != 204
    assert client.get("/t/north/").status_code == 302


@pytest.mark.django_db
def test_a_page_request_still_extends_the_idle_clock(clinic, radiologist, client_for):
    client = client_for(radiologist)
    _age_idle_clock(client, client.session[IDLE_LIMIT] - 5)

    page = client.get("/t/north/")

    assert page.status_code == 200
    assert time.time() - client.session[LAST_SEEN_AT] < 5


# --- Authenticator enrolment: a secret belongs to the session that was shown it ---------


def _enrolment_page(client: Client):
    page = client.get("/accounts/enrol/")
    assert page.status_code == 200
    return page


def _shown_device(page) -> TOTPDevice:
    device = TOTPDevice.objects.get(pk=page.context["form"].initial["device_id"])
    assert totp_secret_base32(device).encode() in page.content
    return device


@pytest.mark.django_db
def test_two_sessions_starting_enrolment_are_shown_different_secrets(
    clinic, radiologist, password_only_client_for
):
    attacker, owner = password_only_client_for(radiologist), password_only_client_for(radiologist)

    attacker_secret = totp_secret_base32(_shown_device(_enrolment_page(attacker)))
    owner_secret = totp_secret_base32(_shown_device(_enrolment_page(owner)))

    assert attacker_secret != owner_secret


@pytest.mark.django_db
def test_a_secret_copied_by_an_earlier_session_can_no_longer_be_confirmed(
    clinic, radiologist, password_only_client_for
):
    attacker, owner = password_only_client_for(radiologist), password_only_client_for(radiologist)
    copied = _shown_device(_enrolment_page(attacker))
    code_from_copy = current_totp(copied)
    _shown_device(_enrolment_page(owner))

    response = attacker.post("/accounts/enrol/", {"device_id": copied.pk, "code": code_from_copy})

    assert response.status_code == 200
    assert "codes" not in response.context
    assert not TOTPDevice.objects.filter(user=radiologist, confirmed=True).exists()


@pytest.mark.django_db
def test_a_session_cannot_confirm_the_pending_device_another_session_was_shown(
    clinic, radiologist, password_only_client_for
):
    owner, attacker = password_only_client_for(radiologist), password_only_client_for(radiologist)
    owners = _shown_device(_enrolment_page(owner))

    response = attacker.post(
        "/accounts/enrol/", {"device_id": owners.pk, "code": current_totp(owners)}
    )

    assert "codes" not in response.context
    assert b"This enrolment has expired" in response.content
    assert not TOTPDevice.objects.filter(user=radiologist, confirmed=True).exists()


@pytest.mark.django_db
def test_a_code_from_a_page_replaced_in_another_tab_says_so_and_the_next_try_works(
    clinic, radiologist, password_only_client_for
):
    client = password_only_client_for(radiologist)
    first_tab = _shown_device(_enrolment_page(client))
    code_from_first_tab = current_totp(first_tab)
    second_tab = _shown_device(_enrolment_page(client))  # the same session, opened again

    replaced = client.post(
        "/accounts/enrol/", {"device_id": first_tab.pk, "code": code_from_first_tab}
    )
    done = client.post(
        "/accounts/enrol/",
        {
            "device_id": replaced.context["form"]["device_id"].value(),
            "code": current_totp(second_tab),
        },
    )

    assert b"replaced by a newer one" in replaced.content
    assert totp_secret_base32(second_tab).encode() in replaced.content
    assert done.context["codes"]
    assert TOTPDevice.objects.get(user=radiologist, confirmed=True).pk == second_tab.pk


@pytest.mark.django_db
def test_each_enrolment_start_is_audited_for_the_person(
    clinic, radiologist, password_only_client_for
):
    client = password_only_client_for(radiologist)
    before = (
        AuditEvent.objects.for_tenant(clinic).filter(action=Action.MFA_ENROLMENT_STARTED).count()
    )

    _enrolment_page(client)
    _enrolment_page(client)

    events = AuditEvent.objects.for_tenant(clinic).filter(action=Action.MFA_ENROLMENT_STARTED)
    assert events.count() == before + 2
    assert [e.detail["replaced_pending"] for e in events.order_by("seq")][-2:] == [False, True]
    assert all(e.target_id == str(radiologist.pk) for e in events)


@pytest.mark.django_db
def test_a_wrong_code_keeps_the_secret_the_session_was_shown(
    clinic, radiologist, password_only_client_for
):
    client = password_only_client_for(radiologist)
    shown = _shown_device(_enrolment_page(client))

    retry = client.post("/accounts/enrol/", {"device_id": shown.pk, "code": "000000"})
    done = client.post("/accounts/enrol/", {"device_id": shown.pk, "code": current_totp(shown)})

    assert totp_secret_base32(shown).encode() in retry.content
    assert done.context["codes"]
    assert TOTPDevice.objects.get(user=radiologist, confirmed=True).pk == shown.pk


# --- Tenant admin list filters: only what the sidebar produces ---------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        {"roles__code__regex": "("},
        {"is_active__regex": "("},
        {"roles__code__iregex": "["},
        {"roles__name__startswith": "R"},
        {"is_active": "1"},
        {"no_such_field": "1"},
        {"roles__code__exact": "patient"},  # which colleagues are patients: not offered
    ],
)
def test_a_lookup_the_list_filters_do_not_produce_is_a_400(tenant_admin, client_for, query):
    response = client_for(tenant_admin).get("/t/north/admin/tenants/membership/", query)

    assert response.status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        {"role": "radiologist"},
        {"is_active__exact": "1"},
        {"is_active__exact": "0", "role": "front_desk"},
        {"q": "north", "o": "1"},
    ],
)
def test_the_parameters_the_list_filters_produce_are_accepted(
    clinic, tenant_admin, radiologist, client_for, query
):
    response = client_for(tenant_admin).get("/t/north/admin/tenants/membership/", query)

    assert response.status_code == 200


@pytest.mark.django_db
def test_a_bad_value_for_an_offered_filter_is_not_a_server_error(tenant_admin, client_for):
    response = client_for(tenant_admin).get(
        "/t/north/admin/tenants/membership/", {"is_active__exact": "("}, follow=True
    )

    assert response.status_code < 500


@pytest.mark.django_db
def test_an_empty_to_field_is_ignored_on_change_and_delete_pages(
    clinic, tenant_admin, radiologist, platform_operator, client_for
):
    membership = Membership.objects.for_tenant(clinic).get(user=radiologist)
    api_token_create(
        tenant=clinic, name="partner", scopes=["studies:read"], actor=TEST_ACTOR, now=timezone.now()
    )
    token = ApiToken.objects.for_tenant(clinic).get()
    admin, operator = client_for(tenant_admin), client_for(platform_operator)

    answers = [
        admin.get(f"/t/north/admin/tenants/membership/{membership.pk}/change/?_to_field="),
        admin.get(f"/t/north/admin/tenants/tenant/{clinic.pk}/change/?_to_field="),
        admin.get(f"/t/north/admin/tenants/apitoken/{token.pk}/delete/?_to_field="),
        operator.get(f"/admin/tenants/tenant/{clinic.pk}/change/?_to_field="),
    ]

    # Tokens are revoked, never deleted: that page is refused, as without `_to_field`.
    assert [answer.status_code for answer in answers] == [200, 200, 403, 200]
    assert admin.get(f"/t/north/admin/tenants/apitoken/{token.pk}/delete/").status_code == 403
