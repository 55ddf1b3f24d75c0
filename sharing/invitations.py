"""The patient portal's front door: invitations, and the links they leave behind.

Front desk invites a patient by email for one or more of the clinic's Patient records.
The token, like a share link's, is 256 bits from `secrets`, stored only as its
SHA-256, and kept encrypted under the clinic key until the email is sent. Accepting
needs the token and, where the clinic holds one, the patient's date of birth; five
misses lock the invitation. Accepting links the account (new or existing, with the
invited email) to the records and gives it the patient role in that clinic, so one
person's portal gathers their studies from every clinic that invited them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models, transaction

import audit
from audit.actors import Actor
from audit.models import Action, ActorType, Outcome
from imaging.models import Patient
from imaging.selectors import patient_records_alike
from portal.tasks import task_send_on_commit
from sharing.models import PatientInvitation, PatientLink, ShareLink
from sharing.services import share_revoke, shares_lock_live
from tenants.invitations import (
    InvitationInvalid,
    InvitationUnavailable,
    invitation_account_create,
    invitation_find,
    invitation_reread,
    invitation_token_claim,
    invitation_token_seal,
    inviter_still_may,
    refusals_audited,
)
from tenants.models import EMAIL_MAX_LENGTH, Membership, Tenant, User
from tenants.roles import STAFF_ROLES, RoleCode
from tenants.services import membership_add, membership_update
from tenants.tokens import token_digest

TOKEN_BYTES = 32
INVITATION_DAYS = 14
MAX_BIRTH_DATE_ATTEMPTS = 5


def _context(invitation: PatientInvitation) -> bytes:
    return f"patient-invitation|{invitation.tenant_id}|{invitation.pk}".encode()


def invitation_actor(invitation: PatientInvitation, *, ip: str | None) -> Actor:
    """Whoever holds the invitation's token, before an account exists."""
    return Actor(type=ActorType.ANONYMOUS, id=f"invitation:{invitation.pk}", ip=ip)


@transaction.atomic
def patient_invite(
    *,
    tenant: Tenant,
    patients: Sequence[Patient],
    email: str,
    invited_by: User,
    actor: Actor,
    now: dt.datetime,
) -> PatientInvitation:
    """Invite a person to see the records `patients` in the portal; the email goes after commit."""
    email = User.objects.normalize_email(email.strip()).lower()
    try:
        validate_email(email)
    except ValidationError as exc:
        raise InvitationInvalid("Enter the patient's email address.") from exc
    if len(email) > EMAIL_MAX_LENGTH:
        raise InvitationInvalid(f"An email address has at most {EMAIL_MAX_LENGTH} characters.")
    if not patients:
        raise InvitationInvalid("Choose at least one patient record.")
    if email == invited_by.email.lower():
        # Staff would otherwise give themselves a patient's images, downloads included,
        # beyond what their role allows: a colleague invites a member who is a patient.
        raise InvitationInvalid("You cannot invite yourself; ask a colleague to invite you.")
    if any(p.tenant_id != tenant.pk for p in patients):
        raise InvitationInvalid("Choose records of this clinic only.")
    already = set(
        PatientLink.objects.for_tenant(tenant)
        .filter(patient__in=patients, revoked_at__isnull=True, user__email__iexact=email)
        .values_list("patient_id", flat=True)
    )
    if already >= {p.pk for p in patients}:
        raise InvitationInvalid("This person already has portal access to these records.")
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    invitation = PatientInvitation.objects.create(
        tenant=tenant,
        email=email,
        token_sha256=token_digest(raw),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + dt.timedelta(days=INVITATION_DAYS),
        created_ip=actor.ip,
    )
    invitation.patients.set(patients)
    invitation_token_seal(invitation, raw=raw, context=_context(invitation))
    for patient in patients:
        audit.record(
            actor=actor,
            action=Action.PATIENT_INVITED,
            target=patient,
            tenant=tenant,
            detail={"invitation": str(invitation.pk)},
        )
    from sharing.tasks import patient_invitation_send

    task_send_on_commit(task=patient_invitation_send, kwargs={"invitation_id": str(invitation.pk)})
    return invitation


@transaction.atomic
def invitation_revoke(*, invitation: PatientInvitation, actor: Actor, now: dt.datetime) -> bool:
    revoked = (
        PatientInvitation.objects.for_tenant(invitation.tenant)
        .filter(pk=invitation.pk, revoked_at__isnull=True, accepted_at__isnull=True)
        .update(revoked_at=now, token_wrapped=None)
    )
    if revoked:
        audit.record(
            actor=actor,
            action=Action.PATIENT_INVITATION_REVOKED,
            target=invitation,
            tenant=invitation.tenant,
            detail={"invitation": str(invitation.pk)},
        )
    return bool(revoked)


def _unscoped() -> models.QuerySet:
    return PatientInvitation.objects.unscoped(reason="an invitation token names its clinic")


def invitation_current(
    *, invitation_id: str, now: dt.datetime, ip: str | None
) -> PatientInvitation:
    """The invitation, re-read; raises InvitationUnavailable (audited) unless it can
    still be accepted."""
    return invitation_reread(
        _unscoped(),
        invitation_id=invitation_id,
        now=now,
        ip=ip,
        refused=Action.PATIENT_INVITATION_REFUSED,
        actor_for=invitation_actor,
    )


def invitation_lookup(*, raw: str, now: dt.datetime, ip: str | None) -> PatientInvitation:
    return invitation_find(
        _unscoped(),
        raw=raw,
        now=now,
        ip=ip,
        refused=Action.PATIENT_INVITATION_REFUSED,
        actor_for=invitation_actor,
    )


def invitation_needs_birth_date(invitation: PatientInvitation) -> bool:
    return invitation.patients.filter(birth_date__isnull=False).exists()


def invitation_check_birth_date(
    *, invitation: PatientInvitation, answer: dt.date, now: dt.datetime, ip: str | None
) -> bool:
    """Compare with the records' dates of birth; five misses lock the invitation."""
    with transaction.atomic():
        locked = (
            PatientInvitation.objects.for_tenant(invitation.tenant)
            .select_for_update()
            .get(pk=invitation.pk)
        )
        if locked.locked_at is not None:
            return False
        known = set(locked.patients.exclude(birth_date=None).values_list("birth_date", flat=True))
        if not known or answer in known:
            return True
        locked.failed_attempts += 1
        fields = ["failed_attempts"]
        actor = invitation_actor(locked, ip=ip)
        audit.record(
            actor=actor,
            action=Action.PATIENT_INVITATION_FAILED,
            target=locked,
            tenant=locked.tenant,
            outcome=Outcome.FAILURE,
            detail={"invitation": str(locked.pk), "attempt": locked.failed_attempts},
        )
        if locked.failed_attempts >= MAX_BIRTH_DATE_ATTEMPTS:
            locked.locked_at = now
            locked.token_wrapped = None
            fields += ["locked_at", "token_wrapped"]
            audit.record(
                actor=actor,
                action=Action.PATIENT_INVITATION_LOCKED,
                target=locked,
                tenant=locked.tenant,
                outcome=Outcome.DENIED,
                detail={"invitation": str(locked.pk)},
            )
        locked.save(update_fields=fields)
    return False


@refusals_audited(Action.PATIENT_INVITATION_REFUSED)
def invitation_accept(
    *, invitation: PatientInvitation, user: User, actor: Actor, now: dt.datetime
) -> list[PatientLink]:
    """Link `user` (who holds the invited email) to the invitation's records, once."""
    if user.email.lower() != invitation.email.lower():
        raise InvitationInvalid(
            "This invitation was sent to another email address. Sign out and open it again."
        )
    if user.pk == invitation.invited_by_id:  # their address changed since: still themselves
        raise InvitationInvalid("You cannot accept an invitation you sent; ask a colleague.")
    inviter_still_may(invitation)
    tenant = invitation.tenant
    # One acceptance at a time per account: the review below counts the records the
    # account holds, which two acceptances at once would each count without the other's.
    User.objects.select_for_update().filter(pk=user.pk).first()
    claimed = (
        PatientInvitation.objects.for_tenant(tenant)
        .filter(
            pk=invitation.pk,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            locked_at__isnull=True,
            expires_at__gt=now,
        )
        .update(accepted_at=now, accepted_by=user, token_wrapped=None)
    )
    if not claimed:
        raise InvitationUnavailable(status=410, reason="used")
    membership_add(tenant=tenant, user=user, roles=[RoleCode.PATIENT], actor=actor)
    links = []
    for patient in invitation.patients.all():
        link, created = PatientLink.objects.get_or_create(
            tenant=tenant,
            patient=patient,
            user=user,
            revoked_at=None,
            defaults={"invitation": invitation, "created_at": now},
        )
        links.append(link)
        if created:
            audit.record(
                actor=actor,
                action=Action.PATIENT_LINKED,
                target=patient,
                tenant=tenant,
                detail={"invitation": str(invitation.pk), "user": str(user.pk)},
            )
    _review(invitation=invitation, user=user, actor=actor)
    return links


# --- Review by the privacy officers -----------------------------------------------------

Review = PatientInvitation.Review


def _same_network(one: str | None, other: str | None) -> bool:
    """Whether two addresses are one network: the same IPv4 address (a clinic's NAT),
    or the same IPv6 /64 (one site's prefix; a device's own part changes)."""
    try:
        a, b = ipaddress.ip_address(one or ""), ipaddress.ip_address(other or "")
    except ValueError:  # one is unknown
        return False
    # A dual-stack server sees IPv4 peers as ::ffff:a.b.c.d: all one /64, yet each its own.
    a = getattr(a, "ipv4_mapped", None) or a
    b = getattr(b, "ipv4_mapped", None) or b
    if a.version != b.version:
        return False
    if a.version == 6:
        return ipaddress.ip_network(f"{a}/64", strict=False) == ipaddress.ip_network(
            f"{b}/64", strict=False
        )
    return a == b


def _one_person(patients: Sequence[Patient]) -> bool:
    """Whether `patients` are all records alike, as the invitation form offers them for
    one person (`patient_records_alike`: same name, by the database's own case rule,
    and birth date)."""
    if len(patients) < 2:
        return True
    alike = {p.pk for p in patient_records_alike(patient=patients[0])}
    return all(p.pk in alike for p in patients)


def invitation_review_reasons(
    *, invitation: PatientInvitation, user: User, ip: str | None
) -> list[str]:
    """Why the accepted `invitation` should be looked at: the ways front desk, who may
    invite but not see images, could give them to an address of their own."""
    tenant = invitation.tenant
    reasons = []
    if (
        Membership.objects.for_tenant(tenant)
        .filter(user=user, is_active=True, roles__code__in=STAFF_ROLES)
        .exists()
    ):
        reasons.append(Review.STAFF_ACCOUNT.value)
    linked = Patient.objects.for_tenant(tenant).filter(
        pk__in=PatientLink.objects.for_tenant(tenant)
        .filter(user=user, revoked_at__isnull=True)
        .values("patient_id")
    )
    if not _one_person(list(linked)):
        reasons.append(Review.SEVERAL_PEOPLE.value)
    if _same_network(invitation.created_ip, ip):
        reasons.append(Review.INVITER_NETWORK.value)
    return reasons


def _review(*, invitation: PatientInvitation, user: User, actor: Actor) -> None:
    reasons = invitation_review_reasons(invitation=invitation, user=user, ip=actor.ip)
    if not reasons:
        return
    tenant = invitation.tenant
    PatientInvitation.objects.for_tenant(tenant).filter(pk=invitation.pk).update(
        review_reasons=reasons
    )
    audit.record(
        actor=actor,
        action=Action.PATIENT_ACCESS_FLAGGED,
        target=invitation,
        tenant=tenant,
        detail={
            "invitation": str(invitation.pk),
            "user": str(user.pk),
            "invited_by": str(invitation.invited_by_id),
            "reasons": reasons,
        },
    )
    from sharing.tasks import patient_access_review_notify

    task_send_on_commit(
        task=patient_access_review_notify, kwargs={"invitation_id": str(invitation.pk)}
    )


def invitation_claim_review_notice(
    *, invitation_id: str, now: dt.datetime
) -> PatientInvitation | None:
    """Claim the privacy officers' notice of a flagged acceptance, at most once."""
    rows = PatientInvitation.objects.unscoped(reason="a task loads its own row by id").filter(
        pk=invitation_id
    )
    claimed = (
        rows.filter(review_notified_at__isnull=True)
        .exclude(review_reasons=[])
        .update(review_notified_at=now)
    )
    return rows.select_related("tenant").get() if claimed else None


@refusals_audited(Action.PATIENT_INVITATION_REFUSED)
def invitation_accept_new_account(
    *,
    invitation: PatientInvitation,
    password: str,
    full_name: str,
    actor: Actor,
    now: dt.datetime,
) -> User:
    """Create the patient's account with the invited email, then accept (neither if the
    invitation is refused)."""
    user = invitation_account_create(
        invitation=invitation, password=password, full_name=full_name, actor=actor
    )
    invitation_accept(
        invitation=invitation, user=user, actor=Actor.for_user(user, ip=actor.ip), now=now
    )
    return user


@transaction.atomic
def patient_link_revoke(*, link: PatientLink, actor: Actor, now: dt.datetime) -> bool:
    """End a portal account's access to one record, and the share links it made for it.

    The account's last record ends its patient role in the clinic.
    """
    tenant = link.tenant
    revoked = (
        PatientLink.objects.for_tenant(tenant)
        .filter(pk=link.pk, revoked_at__isnull=True)
        .update(revoked_at=now)
    )
    if not revoked:
        return False
    shares_lock_live(tenant=tenant, created_by=link.user)  # before the first audit write
    audit.record(
        actor=actor,
        action=Action.PATIENT_UNLINKED,
        target=link.patient,
        tenant=tenant,
        detail={"user": str(link.user_id)},
    )
    # Links the account made to these studies go too: the access may have been a mistake.
    shares = ShareLink.objects.for_tenant(tenant).filter(
        created_by=link.user, study__patient=link.patient, revoked_at__isnull=True
    )
    for share in shares.select_related("study", "tenant").order_by("created_at"):
        share_revoke(share=share, actor=actor, now=now)
    others = PatientLink.objects.for_tenant(tenant).filter(user=link.user, revoked_at__isnull=True)
    membership = Membership.objects.for_tenant(tenant).filter(user=link.user).first()
    if membership is not None and not others.exists():
        roles = set(membership.role_codes) - {RoleCode.PATIENT}
        if roles:
            # Dropping a role never restores access: a deactivated member stays so.
            membership_update(
                membership=membership, roles=roles, is_active=membership.is_active, actor=actor
            )
        elif membership.is_active:
            membership_update(
                membership=membership, roles=membership.role_codes, is_active=False, actor=actor
            )
    return True


# --- The invitation email -------------------------------------------------------------


def invitation_claim_send(*, invitation_id: str) -> tuple[PatientInvitation, str] | None:
    """Claim the email (at most once) and return the invitation with its token."""
    rows = PatientInvitation.objects.unscoped(reason="a task loads its own row by id")
    return invitation_token_claim(rows.filter(pk=invitation_id), context=_context)
