"""Staff invitations: how a person joins a clinic's staff, with their consent.

A tenant admin invites an email address with the roles it should get. The clinic learns
nothing about the account behind the address (whether there is one, whose it is) until
its holder accepts: an account belongs to a person, who may already work for another
clinic or use the patient portal. The token, like a patient invitation's, is 256 bits
from `secrets`, stored only as its SHA-256, and kept encrypted under the clinic key
until the email is sent, so a Celery message never carries it.

The token helpers at the bottom serve patient invitations (`sharing.invitations`) too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, models, transaction
from django.utils import timezone

import audit
from audit.actors import Actor
from audit.models import Action, ActorType, Outcome
from imaging.crypto import unwrap_key, wrap_key
from imaging.keyring import tenant_key, tenant_key_active
from portal.tasks import task_send_on_commit
from tenants.models import (
    EMAIL_MAX_LENGTH,
    Invitation,
    Membership,
    StaffInvitation,
    Tenant,
    User,
)
from tenants.roles import STAFF_ROLES
from tenants.selectors import membership_for_user, roles_get
from tenants.services import membership_add, membership_update, user_create
from tenants.timezones import local_time_text
from tenants.tokens import token_digest

T = TypeVar("T")

TOKEN_BYTES = 32
STAFF_INVITATION_DAYS = 7


class InvitationInvalid(ValueError):
    """The invitation cannot be created or accepted as asked; the message says why."""


class MembershipEnded(InvitationInvalid):
    """The invitee's staff membership of the clinic was ended by its administrators."""


class InvitationUnavailable(Exception):
    """The invitation cannot be used: 404 (unknown, withdrawn), 410 (expired, used), 403."""

    def __init__(self, *, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _context(invitation: StaffInvitation) -> bytes:
    return f"staff-invitation|{invitation.tenant_id}|{invitation.pk}".encode()


def staff_invitation_actor(invitation: StaffInvitation, *, ip: str | None) -> Actor:
    """Whoever holds the invitation's token, before they have signed in."""
    return Actor(type=ActorType.ANONYMOUS, id=f"staff-invitation:{invitation.pk}", ip=ip)


def staff_invite_check(
    *, tenant: Tenant, email: str, roles: Iterable[str], now: dt.datetime
) -> str:
    """The normalised email, or InvitationInvalid saying why this invitation cannot go.

    Only this clinic's own rows are consulted, so the answer reveals nothing about
    accounts elsewhere.
    """
    email = User.objects.normalize_email(email.strip()).lower()
    try:
        validate_email(email)
    except ValidationError as exc:
        raise InvitationInvalid("Enter the person's email address.") from exc
    if len(email) > EMAIL_MAX_LENGTH:
        raise InvitationInvalid(f"An email address has at most {EMAIL_MAX_LENGTH} characters.")
    codes = set(roles)
    if not codes:
        raise InvitationInvalid("Choose at least one role.")
    if not codes <= STAFF_ROLES:
        raise InvitationInvalid(
            "Patients join through a patient portal invitation sent from their record."
        )
    staff = Membership.objects.for_tenant(tenant).filter(
        user__email__iexact=email, roles__code__in=STAFF_ROLES
    )
    if staff.exists():
        raise InvitationInvalid(
            "This person is already on the clinic's staff: change their roles or "
            "reactivate them under Members."
        )
    pending = (
        StaffInvitation.objects.for_tenant(tenant)
        .filter(
            email__iexact=email,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=now,
        )
        .first()
    )
    if pending is not None:
        until = local_time_text(at=pending.expires_at, zone=tenant.zone)
        raise InvitationInvalid(
            f"This address has an invitation waiting until {until}. "
            "Withdraw it first to send a new one."
        )
    return email


@transaction.atomic
def staff_invite(
    *,
    tenant: Tenant,
    email: str,
    roles: Iterable[str],
    invited_by: User,
    actor: Actor,
    now: dt.datetime,
) -> StaffInvitation:
    """Invite an email address to join the clinic's staff; the email goes after commit."""
    codes = sorted(set(roles))
    # One invitation at a time per clinic, so two admins cannot both pass the checks.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    email = staff_invite_check(tenant=tenant, email=email, roles=codes, now=now)
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    invitation = StaffInvitation.objects.create(
        tenant=tenant,
        email=email,
        token_sha256=token_digest(raw),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + dt.timedelta(days=STAFF_INVITATION_DAYS),
    )
    invitation.roles.set(roles_get(codes=codes))
    invitation_token_seal(invitation, raw=raw, context=_context(invitation))
    audit.record(
        actor=actor,
        action=Action.STAFF_INVITED,
        target=invitation,
        tenant=tenant,
        detail={"roles": codes},
    )
    from tenants.tasks import staff_invitation_send

    task_send_on_commit(task=staff_invitation_send, kwargs={"invitation_id": str(invitation.pk)})
    return invitation


@transaction.atomic
def staff_invitation_revoke(*, invitation: StaffInvitation, actor: Actor, now: dt.datetime) -> bool:
    revoked = (
        StaffInvitation.objects.for_tenant(invitation.tenant)
        .filter(pk=invitation.pk, revoked_at__isnull=True, accepted_at__isnull=True)
        .update(revoked_at=now, token_wrapped=None)
    )
    if revoked:
        audit.record(
            actor=actor,
            action=Action.STAFF_INVITATION_REVOKED,
            target=invitation,
            tenant=invitation.tenant,
            detail={},
        )
    return bool(revoked)


def _unscoped() -> models.QuerySet:
    return StaffInvitation.objects.unscoped(reason="an invitation token names its clinic")


def staff_invitation_current(
    *, invitation_id: str, now: dt.datetime, ip: str | None
) -> StaffInvitation:
    """The invitation, re-read; raises InvitationUnavailable (audited) unless it can
    still be accepted."""
    return invitation_reread(
        _unscoped(),
        invitation_id=invitation_id,
        now=now,
        ip=ip,
        refused=Action.STAFF_INVITATION_REFUSED,
        actor_for=staff_invitation_actor,
    )


def staff_invitation_lookup(*, raw: str, now: dt.datetime, ip: str | None) -> StaffInvitation:
    return invitation_find(
        _unscoped(),
        raw=raw,
        now=now,
        ip=ip,
        refused=Action.STAFF_INVITATION_REFUSED,
        actor_for=staff_invitation_actor,
    )


def staff_invitation_roles(invitation: StaffInvitation) -> list[str]:
    return sorted(role.name for role in invitation.roles.all())


def refusals_audited(refused: Action) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Run the decorated acceptance in a transaction of its own, and audit a refusal it
    raises (used meanwhile, suspended, the membership ended) after the rollback, which
    would otherwise take the record with it."""

    def decorate(accept: Callable[..., T]) -> Callable[..., T]:
        atomic = transaction.atomic(accept)

        @functools.wraps(accept)
        def audited(*, invitation: Invitation, actor: Actor, **kwargs: Any) -> T:
            with invitation_refusals_recorded(
                invitation, refused=refused, actor=actor, step="accept"
            ):
                return atomic(invitation=invitation, actor=actor, **kwargs)

        return audited

    return decorate


@refusals_audited(Action.STAFF_INVITATION_REFUSED)
def staff_invitation_accept(
    *, invitation: StaffInvitation, user: User, actor: Actor, now: dt.datetime
) -> Membership:
    """Make `user` (who holds the invited email) a member with the invited roles, once."""
    if user.email.lower() != invitation.email.lower():
        raise InvitationInvalid(
            "This invitation was sent to another email address. Sign out, then open the "
            "link from the email again."
        )
    inviter_still_may(invitation)
    tenant = invitation.tenant
    current = Membership.objects.for_tenant(tenant).select_for_update().filter(user=user).first()
    ended_staff = (
        current is not None and not current.is_active and bool(current.role_codes & STAFF_ROLES)
    )
    if ended_staff:
        raise MembershipEnded(
            f"Your membership of {tenant.name} was ended by its administrators; ask them "
            "to reactivate it."
        )
    claimed = (
        StaffInvitation.objects.for_tenant(tenant)
        .filter(
            pk=invitation.pk,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=now,
        )
        .update(accepted_at=now, accepted_by=user, token_wrapped=None)
    )
    if not claimed:
        raise InvitationUnavailable(status=410, reason="used")
    codes = {role.code for role in invitation.roles.all()}
    if current is not None and not current.is_active:
        # A patient whose portal access ended: the invited roles, not the old one.
        membership = membership_update(membership=current, roles=codes, is_active=True, actor=actor)
    else:
        membership = membership_add(tenant=tenant, user=user, roles=codes, actor=actor)
    audit.record(
        actor=actor,
        action=Action.STAFF_INVITATION_ACCEPTED,
        target=invitation,
        tenant=tenant,
        detail={"user": str(user.pk), "membership": str(membership.pk)},
    )
    return membership


@refusals_audited(Action.STAFF_INVITATION_REFUSED)
def staff_invitation_accept_new_account(
    *,
    invitation: StaffInvitation,
    password: str,
    full_name: str,
    actor: Actor,
    now: dt.datetime,
) -> Membership:
    """Create the invitee's account with the invited email, then accept as that account
    (neither if the invitation is refused)."""
    user = invitation_account_create(
        invitation=invitation, password=password, full_name=full_name, actor=actor
    )
    return staff_invitation_accept(
        invitation=invitation, user=user, actor=Actor.for_user(user, ip=actor.ip), now=now
    )


def staff_invitation_claim_send(*, invitation_id: str) -> tuple[StaffInvitation, str] | None:
    """Claim the email (at most once) and return the invitation with its token."""
    rows = StaffInvitation.objects.unscoped(reason="a task loads its own row by id")
    return invitation_token_claim(rows.filter(pk=invitation_id), context=_context)


# --- Shared with patient invitations ---------------------------------------------------


def invitation_usable(invitation: Invitation | None, *, now: dt.datetime) -> Any:
    """`invitation` if it can still be accepted, else InvitationUnavailable: 404 for an
    unknown or withdrawn one (or a suspended clinic's), 403 locked, 410 expired, used or
    suspended (its sender may no longer send it)."""
    if invitation is None or not invitation.tenant.is_active:
        raise InvitationUnavailable(status=404, reason="unknown")
    state = invitation.state_at(now)
    if state != "pending":
        raise InvitationUnavailable(
            status={"revoked": 404, "locked": 403}.get(state, 410), reason=state
        )
    inviter_still_may(invitation)
    return invitation


def inviter_still_may(invitation: Invitation) -> None:
    """InvitationUnavailable (410, suspended) unless the member who sent `invitation`
    still holds the permission to send it.

    An invitation carries its sender's authority for as long as it waits, as an API
    token carries its creator's: an administrator who is removed must not be able to
    join a private address to the staff afterwards through an invitation sent before.
    It is suspended, not withdrawn: it works again if the member is given the role back.
    """
    membership = membership_for_user(tenant=invitation.tenant, user=invitation.invited_by)
    if membership is None or not membership.has_perm(invitation.inviter_perm):
        raise InvitationUnavailable(status=410, reason="suspended")


def invitation_find(
    rows: models.QuerySet,
    *,
    raw: str,
    now: dt.datetime,
    ip: str | None,
    refused: Action,
    actor_for: Callable[..., Actor],
) -> Any:
    """The pending invitation in `rows` for a token: one indexed equality on its digest.

    A refused token is audited: an unknown one in the platform's chain (someone trying
    tokens), one that can no longer be used (withdrawn, expired, used, locked) in its
    clinic's, where the clinic sees who still holds an old link. The token is not stored.
    """
    invitation = rows.select_related("tenant").filter(token_sha256=token_digest(raw)).first()
    try:
        return invitation_usable(invitation, now=now)
    except InvitationUnavailable as exc:
        if exc.reason == "unknown":
            with transaction.atomic():
                audit.record(
                    actor=Actor(type=ActorType.ANONYMOUS, ip=ip),
                    action=refused,
                    target=None,
                    tenant=None,
                    outcome=Outcome.DENIED,
                    detail={"state": exc.reason},
                )
        else:
            _refusal_record(
                invitation, exc.reason, refused=refused, actor=actor_for(invitation, ip=ip)
            )
        raise


def invitation_reread(
    rows: models.QuerySet,
    *,
    invitation_id: str,
    now: dt.datetime,
    ip: str | None,
    refused: Action,
    actor_for: Callable[..., Actor],
) -> Any:
    """The invitation in `rows` whose id the holder's session keeps, if it can still be
    accepted; a refusal since the token was opened is audited."""
    invitation = rows.select_related("tenant").filter(pk=invitation_id).first()
    with invitation_refusals_recorded(
        invitation,
        refused=refused,
        actor=actor_for(invitation, ip=ip) if invitation else None,
        step="session",
    ):
        return invitation_usable(invitation, now=now)


@contextlib.contextmanager
def invitation_refusals_recorded(
    invitation: Invitation | None, *, refused: Action, actor: Actor | None, step: str
) -> Iterator[None]:
    """Audit, in the invitation's clinic's chain, a refusal raised inside the block:
    the invitation withdrawn, expired, used, locked or suspended since the token was
    opened (`step` "session"), or while it was being accepted ("accept"), or the
    invitee's membership ended. Used outside the accepting transaction, whose rollback
    would take the record with it. An unknown invitation (or a suspended clinic's)
    names no clinic to tell, and is not recorded here.
    """
    try:
        yield
    except (InvitationUnavailable, MembershipEnded) as exc:
        reason = exc.reason if isinstance(exc, InvitationUnavailable) else "membership_ended"
        if invitation is not None and actor is not None and reason != "unknown":
            _refusal_record(invitation, reason, refused=refused, actor=actor, step=step)
        raise


def _refusal_record(
    invitation: Invitation, reason: str, *, refused: Action, actor: Actor, step: str = ""
) -> None:
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=refused,
            target=None,
            tenant=invitation.tenant,
            outcome=Outcome.DENIED,
            detail={
                "state": reason,
                "invitation": str(invitation.pk),
                **({"step": step} if step else {}),
            },
        )


def invitation_account(invitation: Invitation) -> User | None:
    """The existing account with the invited email, for the token holder's eyes only."""
    return User.objects.filter(email__iexact=invitation.email).first()


def invitation_account_create(
    *, invitation: Invitation, password: str, full_name: str, actor: Actor
) -> User:
    """Create the account for the invited email (the caller accepts, in its transaction).

    The account is the person's, not the clinic's: its creation is recorded in the
    platform's chain, so the clinic's log reads the same whether or not its invitee
    already had an account.
    """
    exists = InvitationInvalid("An account with this email exists; sign in to accept.")
    if invitation_account(invitation) is not None:
        raise exists
    validate_password(password, User(email=invitation.email, full_name=full_name))
    try:
        with transaction.atomic():
            return user_create(
                email=invitation.email,
                password=password,
                full_name=full_name,
                actor=actor,
                tenant=None,
            )
    except IntegrityError:  # the same form sent twice at once: the other insert won
        raise exists from None
    except ValidationError as error:  # ... and committed between the two checks
        if "email" in getattr(error, "error_dict", {}):
            raise exists from None
        raise


def invitation_token_seal(invitation: Any, *, raw: str, context: bytes) -> None:
    """Keep the token encrypted under the clinic's active key until its email is sent."""
    version, key = tenant_key_active(tenant=invitation.tenant)
    invitation.token_wrapped = wrap_key(kek=key, key=raw.encode(), context=context)
    invitation.token_key_version = version
    invitation.save(update_fields=["token_wrapped", "token_key_version"])


def invitations_unsent(
    model: type[Invitation], *, now: dt.datetime, since: dt.datetime, due: dt.datetime
) -> models.QuerySet:
    """Invitations in every clinic, created between `since` and `due`, that
    `invitation_token_claim` would still claim: the email not sent, nothing ended them."""
    return model.objects.unscoped(reason="a platform job finds unsent emails everywhere").filter(
        tenant__status=Tenant.Status.ACTIVE,
        sent_at__isnull=True,
        token_wrapped__isnull=False,
        revoked_at__isnull=True,
        accepted_at__isnull=True,
        expires_at__gt=now,
        created_at__range=(since, due),
    )


def invitation_token_claim(
    rows: models.QuerySet, *, context: Callable[[Any], bytes]
) -> tuple[Any, str] | None:
    """Mark the one invitation in `rows` sent (if it still waits for its email), read its
    token and erase it; None when another worker claimed it or it was withdrawn or used.

    Call inside the transaction that sends the email, so a failed send releases the claim.
    """
    claimed = rows.filter(
        tenant__status=Tenant.Status.ACTIVE,
        sent_at__isnull=True,
        token_wrapped__isnull=False,
        revoked_at__isnull=True,
        accepted_at__isnull=True,
    ).update(sent_at=timezone.now())
    if not claimed:
        return None
    invitation = rows.select_related("tenant").get()
    key = tenant_key(tenant=invitation.tenant, version=invitation.token_key_version)
    token = unwrap_key(
        kek=key, wrapped=bytes(invitation.token_wrapped), context=context(invitation)
    ).decode()
    rows.update(token_wrapped=None)
    return invitation, token
