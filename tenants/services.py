"""Writes for clinics, users and memberships. Each one audits in its own transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

import audit
from audit.actors import Actor
from audit.models import Action, Outcome
from portal.tasks import task_send_on_commit
from tenants.models import Membership, Role, Tenant, User, cors_origins_in
from tenants.roles import STAFF_ROLES, RoleCode
from tenants.selectors import roles_get, user_tenants
from tenants.throttle import throttle_reset
from tenants.timezones import DEFAULT_TIME_ZONE

POLICY_FIELDS = (
    "name",
    "session_idle_minutes",
    "session_absolute_hours",
    "step_up_minutes",
    "share_link_default_days",
    "share_link_max_days",
    "share_link_max_uses",
    "cors_allowed_origins",
    "time_zone",
)


class MembershipError(ValidationError):
    """A membership change that would break a clinic rule."""


@transaction.atomic
def tenant_create(
    *, slug: str, name: str, actor: Actor, time_zone: str = DEFAULT_TIME_ZONE
) -> Tenant:
    tenant = Tenant(slug=slug, name=name.strip(), time_zone=time_zone)
    tenant.full_clean()
    tenant.save()
    tenant.mfa_required_roles.set(Role.objects.filter(code__in=[r.value for r in STAFF_ROLES]))
    audit.record(actor=actor, action=Action.TENANT_CREATED, target=tenant, tenant=tenant, detail={})
    return tenant


@transaction.atomic
def tenant_update_policy(*, tenant: Tenant, actor: Actor, changes: dict[str, Any]) -> Tenant:
    """Apply policy changes a tenant admin may make; refuse anything else."""
    unknown = set(changes) - set(POLICY_FIELDS) - {"mfa_required_roles"}
    if unknown:
        raise ValidationError(f"Not a clinic policy field: {', '.join(sorted(unknown))}")
    mfa_roles = changes.pop("mfa_required_roles", None)
    changed = sorted(field for field, value in changes.items() if getattr(tenant, field) != value)
    values = {
        field: _policy_change(field, getattr(tenant, field), changes[field]) for field in changed
    }
    for field, value in changes.items():
        setattr(tenant, field, value)
    tenant.full_clean()
    tenant.save()
    if mfa_roles is not None:
        codes = {role.code if isinstance(role, Role) else str(role) for role in mfa_roles}
        # Staff always need a second factor; only the patient requirement is a choice.
        codes |= {code.value for code in STAFF_ROLES}
        before = set(tenant.mfa_required_roles.values_list("code", flat=True))
        if before != codes:
            tenant.mfa_required_roles.set(Role.objects.filter(code__in=codes))
            changed.append("mfa_required_roles")
            values["mfa_required_roles"] = {"from": sorted(before), "to": sorted(codes)}
    if changed:
        audit.record(
            actor=actor,
            action=Action.TENANT_UPDATED,
            target=tenant,
            tenant=tenant,
            detail={"fields": changed, "changes": values},
        )
    return tenant


# Origins named in one change, each way: enough for any clinic's viewers, and a bound
# on the event's size.
POLICY_ORIGINS_RECORDED = 20


def _policy_change(field: str, old: Any, new: Any) -> dict[str, Any]:
    """What a policy field was and became, for the clinic's log (no PHI: limits, the
    clinic's name and zone, the origins allowed), so an investigator can rebuild the
    policy in force at any moment."""
    if field == "cors_allowed_origins":
        before, after = cors_origins_in(old or ""), cors_origins_in(new or "")
        return {
            "added": sorted(after - before)[:POLICY_ORIGINS_RECORDED],
            "removed": sorted(before - after)[:POLICY_ORIGINS_RECORDED],
        }
    return {"from": old, "to": new}


@transaction.atomic
def user_create(
    *,
    email: str,
    actor: Actor,
    tenant: Tenant | None,
    password: str | None = None,
    full_name: str = "",
    operator: bool = False,
) -> User:
    """Create a person. Without a password the account waits for a password reset.

    An `operator` is a platform operator (superuser), recorded in the platform's chain:
    who could reach every clinic's admin is the first thing an auditor asks.
    """
    if operator and tenant is not None:
        raise ValueError("a platform operator belongs to no clinic")
    user = User(email=email.strip(), full_name=full_name)
    user.clean()
    validate_email(user.email)
    # The lengths the columns hold: validate_email allows 320 characters, the column 254.
    user.clean_fields(exclude=["password"])
    if password is not None:
        validate_password(password, user)
    if User.objects.filter(email__iexact=user.email).exists():
        raise ValidationError({"email": "An account with this email address already exists."})
    create = User.objects.create_superuser if operator else User.objects.create_user
    user = create(email=user.email, password=password, full_name=full_name)
    detail = {"operator": True} if operator else {}
    audit.record(actor=actor, action=Action.USER_CREATED, target=user, tenant=tenant, detail=detail)
    return user


def membership_validate_change(*, membership: Membership, roles: set[str], active: bool) -> None:
    """Refuse a change that would leave the clinic without an active tenant admin.

    Call it inside the transaction that makes the change: a change that does not leave
    the member an admin locks the clinic's row until it commits, so two admins removing
    each other at once take turns, and the second sees the first's change.
    """
    if RoleCode.TENANT_ADMIN in roles and active:
        return
    Tenant.objects.select_for_update().only("pk").get(pk=membership.tenant_id)
    # Read after the lock, not from `membership`: another change may have just made
    # this member an admin.
    admins = Membership.objects.for_tenant(membership.tenant).filter(
        is_active=True, roles__code=RoleCode.TENANT_ADMIN
    )
    is_admin = admins.filter(pk=membership.pk).exists()
    if is_admin and not admins.exclude(pk=membership.pk).exists():
        raise MembershipError("A clinic must keep at least one active tenant admin.")


class LockoutLiftRefused(MembershipError):
    """Not this clinic's lock to lift: only a platform operator may."""


def member_lockout_lift(*, membership: Membership, actor: Actor) -> None:
    """Lift a member's sign-in and second-factor lockout, for their clinic's admin.

    A lockout guards the person's one account, whichever clinic they sign in to. An
    admin may lift it only for someone whose account is this clinic's alone: not a
    platform operator, and no membership of another clinic, active or not (one may be
    reactivated). Otherwise one clinic's admin would reopen password guessing against
    an account that reaches further. The lockout then ends by itself, or an operator
    lifts it (`unlock_signin`). A refusal is audited too, so probing shows.
    """
    user = membership.user
    elsewhere = (
        Membership.objects.unscoped(reason="whether the account reaches another clinic")
        .filter(user=user)
        .exclude(tenant_id=membership.tenant_id)
        .exists()
    )
    refused = elsewhere or user.is_staff or user.is_superuser
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.THROTTLE_RESET,
            target=user,
            tenant=membership.tenant,
            outcome=Outcome.DENIED if refused else Outcome.SUCCESS,
            detail={"membership": str(membership.pk)},
        )
        if not refused:
            # The cache is outside the transaction: lifted once the audit event is kept.
            transaction.on_commit(lambda: throttle_reset(account=user.email), robust=True)
    if refused:
        # Worded alike for every reason: it must not tell the admin where else the
        # person is a member (as a patient, say).
        raise LockoutLiftRefused(
            "Only a platform operator can lift this lockout; it ends by itself."
        )


@transaction.atomic
def membership_add(*, tenant: Tenant, user: User, roles: Iterable[str], actor: Actor) -> Membership:
    """Give a user roles in a clinic; adds to an active membership's roles.

    An ended membership comes back with `roles` only: whoever adds a person back (a
    patient invitation, say) must not hand back the staff roles an administrator ended.
    """
    wanted = set(roles)
    if not wanted:
        raise MembershipError("A member needs at least one role.")
    role_rows = roles_get(codes=sorted(wanted))
    membership = Membership.objects.for_tenant(tenant).select_for_update().filter(user=user).first()
    if membership is None:
        membership = Membership.objects.create(tenant=tenant, user=user)
        membership.roles.set(role_rows)
        audit.record(
            actor=actor,
            action=Action.MEMBERSHIP_CREATED,
            target=membership,
            tenant=tenant,
            detail={"user": str(user.pk), "roles": sorted(wanted)},
        )
        return membership
    return membership_update(
        membership=membership,
        roles=(set(membership.role_codes) | wanted) if membership.is_active else wanted,
        is_active=True,
        actor=actor,
    )


@transaction.atomic
def membership_update(
    *, membership: Membership, roles: Iterable[str], is_active: bool, actor: Actor
) -> Membership:
    """Set a member's roles and active flag, auditing each kind of change."""
    new_roles = set(roles)
    if not new_roles:
        raise MembershipError("A member needs at least one role.")
    role_rows = roles_get(codes=sorted(new_roles))
    old_roles = set(membership.role_codes)
    membership_validate_change(membership=membership, roles=new_roles, active=is_active)
    tenant = membership.tenant
    if new_roles != old_roles:
        membership.roles.set(role_rows)
        audit.record(
            actor=actor,
            action=Action.MEMBERSHIP_ROLES_CHANGED,
            target=membership,
            tenant=tenant,
            detail={
                "user": str(membership.user_id),
                "added": sorted(new_roles - old_roles),
                "removed": sorted(old_roles - new_roles),
            },
        )
    if is_active != membership.is_active:
        membership.is_active = is_active
        membership.save(update_fields=["is_active"])
        audit.record(
            actor=actor,
            action=Action.MEMBERSHIP_REACTIVATED if is_active else Action.MEMBERSHIP_DEACTIVATED,
            target=membership,
            tenant=tenant,
            detail={"user": str(membership.user_id)},
        )
    membership.__dict__.pop("role_codes", None)
    membership.__dict__.pop("permissions", None)
    return membership


@transaction.atomic
def totp_device_create_confirmed(
    *, user: User, actor: Actor, replace: bool = False, name: str = "Authenticator"
) -> TOTPDevice:
    """Create a confirmed TOTP device (operator provisioning); returns it for its URI.

    With `replace`, the person's other TOTP devices are removed: a lost phone's secret
    must stop working. The event says how many were removed.
    """
    detail: dict[str, object] = {"device": "totp"}
    if replace:
        removed, _ = TOTPDevice.objects.filter(user=user).delete()
        detail["replaced"] = removed
    device = TOTPDevice.objects.create(user=user, name=name, confirmed=True)
    for tenant in user_tenants(user=user) or [None]:
        audit.record(
            actor=actor,
            action=Action.MFA_DEVICE_CONFIRMED,
            target=user,
            tenant=tenant,
            detail=detail,
        )
    return device


def notices_unsent_requeue(*, now: dt.datetime) -> int:
    """Queue again, in every clinic, the break-glass notices and staff invitations unsent.

    Those due more than TASK_RECOVER_AFTER_MINUTES ago and within TASK_RECOVER_WITHIN_DAYS:
    their message was lost (a broker that could not be reached at the commit) or the mail
    server's retries were spent. A privacy officer must hear of every break-glass access,
    so its notice is not left to one message. Each task claims its marker: none goes twice.
    """
    from tenants.invitations import invitations_unsent
    from tenants.models import BreakGlassGrant, StaffInvitation
    from tenants.tasks import break_glass_notify, staff_invitation_send

    due = now - dt.timedelta(minutes=settings.TASK_RECOVER_AFTER_MINUTES)
    since = now - dt.timedelta(days=settings.TASK_RECOVER_WITHIN_DAYS)
    grants = BreakGlassGrant.objects.unscoped(reason="a platform job finds unsent notices").filter(
        notified_at__isnull=True, created_at__range=(since, due)
    )
    invitations = invitations_unsent(StaffInvitation, now=now, since=since, due=due)
    count = 0
    for tenant_id, grant_id in grants.values_list("tenant_id", "pk"):
        task_send_on_commit(
            task=break_glass_notify, kwargs={"tenant_id": str(tenant_id), "grant_id": str(grant_id)}
        )
        count += 1
    for invitation_id in invitations.values_list("pk", flat=True):
        task_send_on_commit(
            task=staff_invitation_send, kwargs={"invitation_id": str(invitation_id)}
        )
        count += 1
    return count
