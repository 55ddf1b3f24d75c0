"""Staff invitations: a person joins a clinic only by accepting, and the clinic learns
nothing about an account before that."""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time

import pytest
from django.contrib.messages import get_messages
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from audit.models import Action, ActorType, AuditEvent, Outcome
from portal.logredact import RedactShareTokens
from tenants.invitations import InvitationInvalid, staff_invite
from tenants.models import Membership, StaffInvitation, User
from tenants.services import user_create
from tenants.sessions import LAST_SEEN_AT
from tenants.tasks import staff_invitation_send
from tenants.tokens import token_digest
from tests.helpers import (
    TEST_ACTOR,
    make_clinic,
    make_member,
    membership_of,
    require_postgresql,
    verified_client,
)

INVITE_LINK = re.compile(r"/accounts/invitation/([A-Za-z0-9_-]{43})")
ADMIN = "/t/north/admin/tenants/staffinvitation/"
NEW_PASSWORD = "a long staff passphrase 42"


def _events(tenant, action):
    return AuditEvent.objects.for_tenant(tenant).filter(action=action)


def _invite_by_admin(client: Client, email: str, roles: list[str], capture) -> tuple:
    sent = len(mail.outbox)
    with capture(execute=True):
        response = client.post(f"{ADMIN}add/", {"email": email, "roles": roles})
    return response, mail.outbox[sent:]


def invite(tenant, admin, email, *, capture, roles=("radiologist",)) -> str:
    """Invite through the service and return the token from the email."""
    with capture(execute=True):
        staff_invite(
            tenant=tenant,
            email=email,
            roles=list(roles),
            invited_by=admin,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )
    return INVITE_LINK.search(mail.outbox[-1].body)[1]


def _open(client: Client, token: str) -> None:
    response = client.get(f"/accounts/invitation/{token}")
    assert response.status_code == 303 and response["Location"] == "/accounts/invitation/"
    assert response["Referrer-Policy"] == "no-referrer"


# --- The tenant admin invites -------------------------------------------------------------


@pytest.mark.django_db
def test_admin_learns_nothing_about_the_account_behind_an_address(
    clinic, other_clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    known = make_member(other_clinic, "radiologist", email="dr.known@south.example")
    known.full_name = "Zed Hiddenname"
    known.save()
    client = client_for(tenant_admin)

    answers = {}
    for email in ("dr.known@south.example", "nobody.yet@elsewhere.example"):
        response, sent = _invite_by_admin(
            client, email, ["radiologist"], django_capture_on_commit_callbacks
        )
        words = [str(m) for m in get_messages(response.wsgi_request)]
        answers[email] = (response.status_code, response["Location"], words, len(sent))

    assert answers["dr.known@south.example"] == (
        302,
        ADMIN,
        [
            "Invitation sent to dr.known@south.example. It is valid for 7 days; "
            "the person becomes a member when they accept it."
        ],
        1,
    )
    assert answers["nobody.yet@elsewhere.example"][0:2] == (302, ADMIN)
    assert answers["nobody.yet@elsewhere.example"][3] == 1
    assert not Membership.objects.for_tenant(clinic).filter(user=known).exists()
    assert not User.objects.filter(email="nobody.yet@elsewhere.example").exists()
    for page in (client.get(ADMIN), client.get("/t/north/admin/tenants/membership/")):
        assert b"Hiddenname" not in page.content
    listing = client.get(ADMIN).content
    assert b"dr.known@south.example" in listing and b"Waiting for the invitee" in listing


@pytest.mark.django_db
def test_invitation_email_carries_the_only_copy_of_the_token(
    clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    response, sent = _invite_by_admin(
        client_for(tenant_admin),
        "New.Tech@North.example",
        ["technologist", "front_desk"],
        django_capture_on_commit_callbacks,
    )

    assert response.status_code == 302
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    [email] = sent
    token = INVITE_LINK.search(email.body)[1]
    assert email.to == ["new.tech@north.example"]
    assert "Front desk, Technologist" in email.body
    assert invitation.token_sha256 == token_digest(token)
    assert invitation.token_wrapped is None and invitation.sent_at is not None
    assert token not in str(invitation.__dict__)
    event = _events(clinic, Action.STAFF_INVITED).get(target_id=str(invitation.pk))
    assert event.actor_id == str(tenant_admin.pk)
    assert event.detail == {"roles": ["front_desk", "technologist"]}
    assert "north.example" not in str(event.detail)


@pytest.mark.django_db
def test_invitation_email_goes_once(clinic, tenant_admin, django_capture_on_commit_callbacks):
    invite(clinic, tenant_admin, "once@north.example", capture=django_capture_on_commit_callbacks)
    invitation = StaffInvitation.objects.for_tenant(clinic).get()

    again = staff_invitation_send.delay(invitation_id=str(invitation.pk)).get()

    assert again is False
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_members_cannot_be_added_directly_any_more(clinic, other_clinic, tenant_admin, client_for):
    foreign = make_member(other_clinic, "radiologist", email="foreign@south.example")
    client = client_for(tenant_admin)

    get = client.get("/t/north/admin/tenants/membership/add/")
    post = client.post(
        "/t/north/admin/tenants/membership/add/",
        {"email": foreign.email, "roles": ["tenant_admin"], "is_active": "on"},
    )

    assert get.status_code == post.status_code == 403
    assert not Membership.objects.for_tenant(clinic).filter(user=foreign).exists()


# A valid address (local part 64, domain 247) longer than any email column.
LONG_EMAIL = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".org"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("email", "roles", "error"),
    [
        ("not-an-address", ["radiologist"], b"Enter a valid email address"),
        ("radiologist@north.example", ["technologist"], b"already on the clinic&#x27;s staff"),
        ("pending@north.example", ["radiologist"], b"has an invitation waiting until"),
        ("someone@north.example", [], b"This field is required"),
        (LONG_EMAIL, ["radiologist"], b"at most 254 characters"),
    ],
)
def test_invitation_form_errors_change_nothing(
    email,
    roles,
    error,
    clinic,
    tenant_admin,
    radiologist,
    client_for,
    django_capture_on_commit_callbacks,
):
    invite(
        clinic, tenant_admin, "pending@north.example", capture=django_capture_on_commit_callbacks
    )
    before = set(StaffInvitation.objects.for_tenant(clinic).values_list("pk", flat=True))

    response, sent = _invite_by_admin(
        client_for(tenant_admin), email, roles, django_capture_on_commit_callbacks
    )

    assert response.status_code == 200
    assert error in response.content
    assert sent == []
    assert set(StaffInvitation.objects.for_tenant(clinic).values_list("pk", flat=True)) == before


@pytest.mark.django_db
def test_patient_role_is_neither_offered_nor_accepted(clinic, tenant_admin, client_for):
    page = client_for(tenant_admin).get(f"{ADMIN}add/")

    offered = {role.code for role in page.context["adminform"].form.fields["roles"].queryset}
    assert offered == {"tenant_admin", "radiologist", "technologist", "front_desk"} | {
        "referring_physician",
        "privacy_officer",
    }
    with pytest.raises(InvitationInvalid, match="at most 254"):
        staff_invite(
            tenant=clinic,
            email=LONG_EMAIL,
            roles=["radiologist"],
            invited_by=tenant_admin,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )
    with pytest.raises(InvitationInvalid, match="patient portal invitation"):
        staff_invite(
            tenant=clinic,
            email="pat@north.example",
            roles=["patient"],
            invited_by=tenant_admin,
            actor=TEST_ACTOR,
            now=timezone.now(),
        )


@pytest.mark.django_db
def test_only_tenant_admins_reach_invitations(clinic, radiologist, client_for):
    client = client_for(radiologist)

    assert client.get(ADMIN).status_code == 403
    assert (
        client.post(f"{ADMIN}add/", {"email": "x@y.example", "roles": ["radiologist"]}).status_code
        == 403
    )
    assert not StaffInvitation.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_other_clinics_invitation_is_404_and_cannot_be_withdrawn(
    clinic,
    other_clinic,
    tenant_admin,
    other_tenant_admin,
    client_for,
    django_capture_on_commit_callbacks,
):
    invite(
        other_clinic,
        other_tenant_admin,
        "theirs@south.example",
        capture=django_capture_on_commit_callbacks,
    )
    foreign = StaffInvitation.objects.for_tenant(other_clinic).get()
    client = client_for(tenant_admin)

    listing = client.get(ADMIN)
    detail = client.get(f"{ADMIN}{foreign.pk}/change/")
    client.post(ADMIN, {"action": "withdraw", "_selected_action": [str(foreign.pk)]})

    assert b"theirs@south.example" not in listing.content
    assert detail.status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


@pytest.mark.django_db
def test_withdrawn_invitation_link_stops_working_and_is_audited(
    clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    token = invite(
        clinic, tenant_admin, "late@north.example", capture=django_capture_on_commit_callbacks
    )
    invitation = StaffInvitation.objects.for_tenant(clinic).get()

    response = client_for(tenant_admin).post(
        ADMIN, {"action": "withdraw", "_selected_action": [str(invitation.pk)]}
    )

    assert response.status_code == 302
    assert _events(clinic, Action.STAFF_INVITATION_REVOKED).filter(target_id=str(invitation.pk))
    assert Client().get(f"/accounts/invitation/{token}").status_code == 404


# --- The invitee accepts ------------------------------------------------------------------


@pytest.mark.django_db
def test_another_clinics_staff_member_joins_by_accepting(
    clinic, other_clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic,
        tenant_admin,
        "Tech@South.example",
        roles=("radiologist",),
        capture=django_capture_on_commit_callbacks,
    )
    client = verified_client(person)
    _open(client, token)

    page = client.get("/accounts/invitation/")
    response = client.post("/accounts/invitation/")

    assert b"Join North Imaging" in page.content and b"Radiologist" in page.content
    assert response.status_code == 302 and response["Location"] == "/t/north/"
    membership = membership_of(person, clinic)
    assert membership.role_codes == {"radiologist"}
    assert membership_of(person, other_clinic).role_codes == {"technologist"}
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    assert invitation.accepted_by == person
    accepted = _events(clinic, Action.STAFF_INVITATION_ACCEPTED).get(target_id=str(invitation.pk))
    assert accepted.actor_id == str(person.pk)
    assert accepted.detail == {"user": str(person.pk), "membership": str(membership.pk)}
    assert _events(clinic, Action.MEMBERSHIP_CREATED).filter(target_id=str(membership.pk))
    assert client.get("/t/north/").status_code == 200


@pytest.mark.django_db
def test_signed_out_invitee_with_an_account_is_sent_to_sign_in(
    clinic, other_clinic, tenant_admin, django_capture_on_commit_callbacks
):
    make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    client = Client()
    _open(client, token)

    page = client.get("/accounts/invitation/")

    assert page.status_code == 200
    assert b"Sign in with it, then accept" in page.content
    assert b"/accounts/login/?next=/accounts/invitation/" in page.content


@pytest.mark.django_db
def test_new_person_creates_an_account_then_must_enrol_a_second_factor(
    clinic, tenant_admin, django_capture_on_commit_callbacks
):
    token = invite(
        clinic,
        tenant_admin,
        "new.rad@north.example",
        roles=("radiologist", "privacy_officer"),
        capture=django_capture_on_commit_callbacks,
    )
    client = Client()
    _open(client, token)

    form = client.get("/accounts/invitation/")
    response = client.post(
        "/accounts/invitation/",
        {"full_name": "Ada Newrad", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )

    assert b"Create account and accept" in form.content
    assert response.status_code == 302 and response["Location"] == "/t/north/"
    user = User.objects.get(email="new.rad@north.example")
    assert user.full_name == "Ada Newrad" and user.check_password(NEW_PASSWORD)
    assert membership_of(user, clinic).role_codes == {"radiologist", "privacy_officer"}
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    # The account is the person's: its creation goes to the platform's chain, and the
    # clinic's reads as it would for someone who already had an account.
    assert not _events(clinic, Action.USER_CREATED).filter(target_id=str(user.pk)).exists()
    created = AuditEvent.objects.unscoped(reason="the platform chain").get(
        tenant=None, action=Action.USER_CREATED, target_id=str(user.pk)
    )
    assert created.actor_id == f"staff-invitation:{invitation.pk}"
    accepted = _events(clinic, Action.STAFF_INVITATION_ACCEPTED).get()
    assert (accepted.actor_type, accepted.actor_id) == (ActorType.USER, str(user.pk))
    landing = client.get("/t/north/")
    assert landing.status_code == 302 and landing["Location"].startswith("/accounts/enrol/")


@pytest.mark.django_db
def test_weak_password_or_missing_name_creates_nothing(
    clinic, tenant_admin, django_capture_on_commit_callbacks
):
    token = invite(
        clinic, tenant_admin, "weak@north.example", capture=django_capture_on_commit_callbacks
    )
    client = Client()
    _open(client, token)

    weak = client.post(
        "/accounts/invitation/",
        {"full_name": "Weak Pass", "password": "password", "password_again": "password"},
    )
    nameless = client.post(
        "/accounts/invitation/",
        {"full_name": "", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )

    assert weak.status_code == nameless.status_code == 400
    assert b"too common" in weak.content
    assert not User.objects.filter(email="weak@north.example").exists()
    assert StaffInvitation.objects.for_tenant(clinic).get().accepted_at is None


@pytest.mark.django_db
def test_signed_in_as_someone_else_cannot_accept(
    clinic, tenant_admin, radiologist, django_capture_on_commit_callbacks
):
    token = invite(
        clinic,
        tenant_admin,
        "intended@north.example",
        roles=("tenant_admin",),
        capture=django_capture_on_commit_callbacks,
    )
    client = verified_client(radiologist)
    _open(client, token)

    page = client.get("/accounts/invitation/")
    response = client.post("/accounts/invitation/")

    assert b"sent to another email address" in page.content
    assert response.status_code == 400
    assert membership_of(radiologist, clinic).role_codes == {"radiologist"}
    assert StaffInvitation.objects.for_tenant(clinic).get().accepted_at is None


@pytest.mark.django_db
def test_an_invitation_is_accepted_once(clinic, tenant_admin, django_capture_on_commit_callbacks):
    token = invite(
        clinic, tenant_admin, "once@north.example", capture=django_capture_on_commit_callbacks
    )
    first = Client()
    _open(first, token)
    first.post(
        "/accounts/invitation/",
        {"full_name": "Once Only", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )

    again = Client().get(f"/accounts/invitation/{token}")

    assert again.status_code == 410
    assert b"already been accepted" in again.content
    assert (
        Membership.objects.for_tenant(clinic).filter(user__email="once@north.example").count() == 1
    )


@pytest.mark.django_db
def test_refused_links_are_audited_where_they_belong(
    clinic, tenant_admin, django_capture_on_commit_callbacks
):
    token = invite(
        clinic, tenant_admin, "slow@north.example", capture=django_capture_on_commit_callbacks
    )
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    StaffInvitation.objects.for_tenant(clinic).filter(pk=invitation.pk).update(
        created_at=timezone.now() - dt.timedelta(days=9),
        expires_at=timezone.now() - dt.timedelta(days=2),
    )

    expired = Client().get(f"/accounts/invitation/{token}", REMOTE_ADDR="203.0.113.9")
    unknown = Client().get("/accounts/invitation/" + "A" * 43)

    assert expired.status_code == 410 and b"has expired" in expired.content
    assert unknown.status_code == 404 and b"does not work" in unknown.content
    refused = _events(clinic, Action.STAFF_INVITATION_REFUSED).get()
    assert refused.outcome == Outcome.DENIED
    assert refused.detail == {"state": "expired", "invitation": str(invitation.pk)}
    assert refused.actor_id == f"staff-invitation:{invitation.pk}"
    assert refused.actor_ip == "203.0.113.9"
    platform = AuditEvent.objects.unscoped(reason="the platform chain").get(
        tenant=None, action=Action.STAFF_INVITATION_REFUSED
    )
    assert platform.actor_type == ActorType.ANONYMOUS and platform.detail == {"state": "unknown"}
    stored = list(AuditEvent.objects.unscoped(reason="every chain").values())
    assert token not in str(stored)


@pytest.mark.django_db
@pytest.mark.parametrize("by", ["withdrawn", "expired"])
def test_a_link_refused_after_it_was_opened_is_audited_too(
    clinic, tenant_admin, django_capture_on_commit_callbacks, by
):
    token = invite(
        clinic, tenant_admin, "held@north.example", capture=django_capture_on_commit_callbacks
    )
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    holder = Client(REMOTE_ADDR="203.0.113.7")
    _open(holder, token)
    rows = StaffInvitation.objects.for_tenant(clinic).filter(pk=invitation.pk)
    if by == "withdrawn":
        rows.update(revoked_at=timezone.now())
    else:
        rows.update(
            created_at=timezone.now() - dt.timedelta(days=8),
            expires_at=timezone.now() - dt.timedelta(minutes=1),
        )

    response = holder.post(
        "/accounts/invitation/",
        {"full_name": "Held Back", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    again = holder.get("/accounts/invitation/")  # the session no longer names it

    assert response.status_code in (404, 410) and again.status_code == 404
    refused = _events(clinic, Action.STAFF_INVITATION_REFUSED).get()
    state = "revoked" if by == "withdrawn" else "expired"
    assert refused.detail == {"state": state, "invitation": str(invitation.pk), "step": "session"}
    assert (refused.outcome, refused.actor_ip) == (Outcome.DENIED, "203.0.113.7")
    assert not User.objects.filter(email="held@north.example").exists()


@pytest.mark.django_db
def test_an_acceptance_refused_because_the_membership_ended_is_audited(
    clinic, other_clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    person = make_member(other_clinic, "technologist", email="ended@south.example")
    token = invite(
        clinic, tenant_admin, "ended@south.example", capture=django_capture_on_commit_callbacks
    )
    make_member(clinic, "technologist", email="ended@south.example")
    membership = membership_of(person, clinic)
    Membership.objects.for_tenant(clinic).filter(pk=membership.pk).update(is_active=False)
    client = verified_client(person)
    _open(client, token)

    response = client.post("/accounts/invitation/")

    assert response.status_code == 400
    refused = _events(clinic, Action.STAFF_INVITATION_REFUSED).get()
    assert refused.detail["state"] == "membership_ended" and refused.detail["step"] == "accept"
    assert refused.actor_id == str(person.pk)


def test_invitation_tokens_are_redacted_from_log_lines():
    token = "Q" * 43
    for path in (f"/accounts/invitation/{token}", f"/portal/invitation/{token}"):
        record = logging.LogRecord(
            "django.request", logging.WARNING, "", 0, "Gone: %s", (path,), None
        )

        RedactShareTokens().filter(record)

        assert token not in record.getMessage() and "invitation/[redacted]" in record.getMessage()


# --- Found in review ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_url_is_not_copied_into_a_sign_in_redirect(
    clinic, other_clinic, tenant_admin, password_only_client_for, django_capture_on_commit_callbacks
):
    # Signed in with a password, the second factor still to come.
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    client = password_only_client_for(person)

    opened = client.get(f"/accounts/invitation/{token}")
    home = client.get("/accounts/invitation/")

    assert opened.status_code == 303 and opened["Location"] == "/accounts/invitation/"
    assert home.status_code == 302
    assert home["Location"] == "/accounts/enrol/?next=%2Faccounts%2Finvitation%2F"


def test_percent_encoded_tokens_are_redacted_too():
    token = "Q" * 43
    for path in (
        f"/accounts/verify/?next=%2Faccounts%2Finvitation%2F{token}",
        f"/accounts/login/?next=%2fportal%2finvitation%2f{token}",
        f"/accounts/login/?next=%2Fs%2F{token}",
    ):
        record = logging.LogRecord("django.request", 30, "", 0, "Not Found: %s", (path,), None)

        RedactShareTokens().filter(record)

        assert token not in record.getMessage() and "[redacted]" in record.getMessage()


@pytest.mark.django_db
def test_a_patient_signed_in_without_a_second_factor_enrols_before_accepting(
    clinic, tenant_admin, patient, password_only_client_for, django_capture_on_commit_callbacks
):
    token = invite(clinic, tenant_admin, patient.email, capture=django_capture_on_commit_callbacks)
    client = password_only_client_for(patient)
    _open(client, token)

    response = client.post("/accounts/invitation/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/enrol/?next=%2Faccounts%2Finvitation%2F"
    assert membership_of(patient, clinic).role_codes == {"patient"}


@pytest.mark.django_db
def test_a_clinic_patient_becomes_staff_only_by_accepting(
    clinic, tenant_admin, patient, client_for, django_capture_on_commit_callbacks
):
    membership = membership_of(patient, clinic)
    admin = client_for(tenant_admin)

    direct = admin.post(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/",
        {"roles": ["patient", "radiologist"], "is_active": "on"},
    )
    invited, sent = _invite_by_admin(
        admin, patient.email, ["radiologist"], django_capture_on_commit_callbacks
    )

    # A patient's portal account is not in the clinic's administration at all.
    assert direct.status_code == 404
    assert membership_of(patient, clinic).role_codes == {"patient"}
    assert invited.status_code == 302 and len(sent) == 1
    client = verified_client(patient)
    _open(client, INVITE_LINK.search(sent[0].body)[1])
    client.post("/accounts/invitation/")
    assert membership_of(patient, clinic).role_codes == {"patient", "radiologist"}


@pytest.mark.django_db
def test_accepting_does_not_undo_a_deactivation(
    clinic, other_clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    # Meanwhile they joined by another invitation, and the clinic ended their membership.
    make_member(clinic, "technologist", email="tech@south.example")
    membership = membership_of(person, clinic)
    client_for(tenant_admin).post(
        f"/t/north/admin/tenants/membership/{membership.pk}/change/", {"roles": ["technologist"]}
    )
    client = verified_client(person)
    _open(client, token)

    response = client.post("/accounts/invitation/")

    assert response.status_code == 400 and b"was ended by its administrators" in response.content
    membership.refresh_from_db()
    assert not membership.is_active
    assert StaffInvitation.objects.for_tenant(clinic).get().accepted_at is None


@pytest.mark.django_db
def test_a_former_patient_gets_the_invited_roles_only(
    clinic, tenant_admin, patient, django_capture_on_commit_callbacks
):
    membership = membership_of(patient, clinic)
    Membership.objects.for_tenant(clinic).filter(pk=membership.pk).update(is_active=False)
    token = invite(clinic, tenant_admin, patient.email, capture=django_capture_on_commit_callbacks)
    client = verified_client(patient)
    _open(client, token)

    response = client.post("/accounts/invitation/")

    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.is_active and membership.role_codes == {"radiologist"}


@pytest.mark.django_db
def test_an_idle_session_ends_and_the_link_still_opens_without_its_token_in_next(
    clinic, other_clinic, tenant_admin, django_capture_on_commit_callbacks
):
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    client = verified_client(person)
    session = client.session
    session[LAST_SEEN_AT] -= 24 * 3600
    session.save()

    opened = client.get(f"/accounts/invitation/{token}")
    home = client.get("/accounts/invitation/")

    assert opened.status_code == 303 and opened["Location"] == "/accounts/invitation/"
    assert b"Sign in with it, then accept" in home.content  # signed out, link kept
    assert _events(other_clinic, Action.SESSION_EXPIRED).exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_account_created_at_the_same_moment_is_a_clear_error_not_a_500(
    django_capture_on_commit_callbacks,
):
    # The same new-account form sent twice at once: the second insert waits on the
    # first's unique email, then fails when it commits. That must read as "an account
    # exists", change nothing, and never be a 500.
    require_postgresql()
    clinic = make_clinic("racing")
    admin = make_member(clinic, "tenant_admin")
    email = "twice@racing.example"
    token = invite(clinic, admin, email, capture=django_capture_on_commit_callbacks)
    client = Client()
    _open(client, token)
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    answers = []

    def first_submission():
        try:
            with transaction.atomic():
                user_create(email=email, password=NEW_PASSWORD, actor=TEST_ACTOR, tenant=None)
                first_inserted.set()
                first_may_commit.wait(timeout=30)
        finally:
            connection.close()

    def second_submission():
        try:
            answers.append(
                client.post(
                    "/accounts/invitation/",
                    {
                        "full_name": "Twice",
                        "password": NEW_PASSWORD,
                        "password_again": NEW_PASSWORD,
                    },
                )
            )
        finally:
            connection.close()

    first = threading.Thread(target=first_submission)
    first.start()
    assert first_inserted.wait(timeout=30)
    second = threading.Thread(target=second_submission)
    second.start()
    _wait_for_a_blocked_insert_into(User._meta.db_table)
    first_may_commit.set()
    first.join(timeout=30)
    second.join(timeout=30)

    (answer,) = answers
    assert answer.status_code == 400
    assert b"An account with this email exists; sign in to accept." in answer.content
    assert User.objects.filter(email=email).count() == 1
    assert not Membership.objects.for_tenant(clinic).filter(user__email=email).exists()
    invitation = StaffInvitation.objects.for_tenant(clinic).get()
    assert invitation.accepted_at is None
    assert not _events(clinic, Action.STAFF_INVITATION_ACCEPTED).exists()


def _wait_for_a_blocked_insert_into(table: str) -> None:
    """Return once another connection's INSERT into `table` waits on a lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s",
                [f'INSERT INTO "{table}"%'],
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError(f"no INSERT into {table} waited on a lock")


@pytest.mark.django_db
def test_an_invitation_from_an_admin_who_was_removed_is_suspended_until_they_are_back(
    clinic, other_clinic, tenant_admin, django_capture_on_commit_callbacks
):
    from tenants.services import membership_update

    make_member(clinic, "tenant_admin", email="second.admin@north.example")
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    client = verified_client(person)
    _open(client, token)  # opened while the admin still was one
    sender = membership_of(tenant_admin, clinic)

    membership_update(membership=sender, roles=["tenant_admin"], is_active=False, actor=TEST_ACTOR)
    refused = client.post("/accounts/invitation/")
    reopened = client.get(f"/accounts/invitation/{token}")
    membership_update(membership=sender, roles=["tenant_admin"], is_active=True, actor=TEST_ACTOR)
    _open(client, token)
    accepted = client.post("/accounts/invitation/")

    assert refused.status_code == 410 and b"may no longer invite staff" in refused.content
    assert reopened.status_code == 410
    refusals = _events(clinic, Action.STAFF_INVITATION_REFUSED).order_by("seq")
    assert [(e.detail["state"], e.detail.get("step")) for e in refusals] == [
        ("suspended", "session"),  # the held session, then the link opened again
        ("suspended", None),
    ]
    assert accepted.status_code == 302
    assert membership_of(person, clinic).role_codes == {"radiologist"}


@pytest.mark.django_db
def test_an_invitation_is_suspended_while_its_sender_lacks_the_admin_role(
    clinic, other_clinic, tenant_admin, client_for, django_capture_on_commit_callbacks
):
    from tenants.services import membership_update

    colleague = make_member(clinic, "tenant_admin", email="second.admin@north.example")
    person = make_member(other_clinic, "technologist", email="tech@south.example")
    token = invite(
        clinic, tenant_admin, "tech@south.example", capture=django_capture_on_commit_callbacks
    )
    membership_update(
        membership=membership_of(tenant_admin, clinic),
        roles=["radiologist"],
        is_active=True,
        actor=TEST_ACTOR,
    )

    response = verified_client(person).get(f"/accounts/invitation/{token}")
    listing = client_for(colleague).get(ADMIN)

    assert response.status_code == 410
    assert b"Suspended: its sender may no longer invite staff" in listing.content
    assert not Membership.objects.for_tenant(clinic).filter(user=person).exists()
