"""Reads for clinics, members and roles. Every clinic read names its clinic."""

from __future__ import annotations

from django.db.models import QuerySet

from tenants.models import Membership, Role, Tenant, User
from tenants.roles import RoleCode


def tenant_get_active(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug, status=Tenant.Status.ACTIVE).first()


def membership_for_user(*, tenant: Tenant, user: User) -> Membership | None:
    """The user's active membership in an active clinic, roles prefetched, or None."""
    if not user.is_authenticated or not user.is_active or not tenant.is_active:
        return None
    return (
        Membership.objects.for_tenant(tenant)
        .filter(user=user, is_active=True)
        .prefetch_related("roles")
        .select_related("tenant")
        .first()
    )


def user_memberships(*, user: User) -> QuerySet[Membership]:
    """A person's own active memberships across clinics (the clinic switcher)."""
    return (
        Membership.objects.unscoped(reason="a user's own memberships span clinics")
        .filter(user=user, is_active=True, tenant__status=Tenant.Status.ACTIVE)
        .select_related("tenant")
        .prefetch_related("roles")
        .order_by("tenant__name")
    )


def user_tenants(*, user: User) -> list[Tenant]:
    return [membership.tenant for membership in user_memberships(user=user)]


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return (
        Membership.objects.for_tenant(tenant)
        .select_related("user")
        .prefetch_related("roles")
        .order_by("user__email")
    )


def members_with_role(*, tenant: Tenant, role: str) -> QuerySet[Membership]:
    return membership_list(tenant=tenant).filter(
        is_active=True, user__is_active=True, roles__code=role
    )


def oversight_emails(*, tenant: Tenant) -> list[str]:
    """Who hears of access to review (break-glass, flagged portal access): the clinic's
    privacy officers, or, in a clinic that has none, its tenant admins, so that no such
    notice goes to nobody."""
    for role in (RoleCode.PRIVACY_OFFICER, RoleCode.TENANT_ADMIN):
        emails = [m.user.email for m in members_with_role(tenant=tenant, role=role)]
        if emails:
            return emails
    return []


def roles_get(*, codes: list[str]) -> list[Role]:
    roles = list(Role.objects.filter(code__in=codes))
    missing = set(codes) - {role.code for role in roles}
    if missing:
        raise ValueError(f"Unknown role(s): {', '.join(sorted(missing))}")
    return roles
