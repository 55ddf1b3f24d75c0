"""Per-object grants (django-guardian), always inside one clinic.

Guardian's own shortcuts know nothing of clinics; these wrappers refuse an object
or a grantee from another clinic and filter every lookup by the clinic, so a stray
grant row can never open another clinic's object. Use these, never guardian directly.
"""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, get_objects_for_user, remove_perm  # noqa: TID251

import audit
from audit.actors import Actor
from audit.models import Action
from tenants.models import Tenant, User
from tenants.scoping import TenantScopeError
from tenants.selectors import membership_for_user


class GrantError(ValueError):
    """The grant would cross a clinic boundary."""


def _check(*, tenant: Tenant, user: User, obj: models.Model) -> None:
    if getattr(obj, "tenant_id", None) != tenant.pk:
        raise TenantScopeError("Object does not belong to this clinic")
    if membership_for_user(tenant=tenant, user=user) is None:
        raise GrantError("The grantee is not an active member of this clinic")


@transaction.atomic
def object_grant(*, tenant: Tenant, user: User, perm: str, obj: models.Model, actor: Actor) -> None:
    _check(tenant=tenant, user=user, obj=obj)
    assign_perm(perm, user, obj)
    audit.record(
        actor=actor,
        action=Action.GRANT_ADDED,
        target=obj,
        tenant=tenant,
        detail={"grantee": str(user.pk), "perm": perm},
    )


@transaction.atomic
def object_revoke(
    *, tenant: Tenant, user: User, perm: str, obj: models.Model, actor: Actor
) -> None:
    if getattr(obj, "tenant_id", None) != tenant.pk:
        raise TenantScopeError("Object does not belong to this clinic")
    remove_perm(perm, user, obj)
    audit.record(
        actor=actor,
        action=Action.GRANT_REVOKED,
        target=obj,
        tenant=tenant,
        detail={"grantee": str(user.pk), "perm": perm},
    )


def objects_granted(
    *, tenant: Tenant, user: User, perm: str, queryset: models.QuerySet[Any]
) -> models.QuerySet[Any]:
    """Rows of `queryset` in `tenant` on which `user` holds `perm` by object grant."""
    if membership_for_user(tenant=tenant, user=user) is None:
        return queryset.none()
    return get_objects_for_user(
        user,
        perm,
        klass=queryset.filter(tenant=tenant),
        accept_global_perms=False,
        with_superuser=False,
    )


def object_granted(*, tenant: Tenant, user: User, perm: str, obj: models.Model) -> bool:
    if getattr(obj, "tenant_id", None) != tenant.pk:
        return False
    if membership_for_user(tenant=tenant, user=user) is None:
        return False
    # The grant rows themselves, not user.has_perm or guardian's checker: both let a
    # superuser through, and an operator's flag must open nothing clinical.
    app_label, _, codename = perm.partition(".")
    return UserObjectPermission.objects.filter(
        user=user,
        permission__codename=codename,
        permission__content_type__app_label=app_label,
        content_type=ContentType.objects.get_for_model(obj),
        object_pk=str(obj.pk),
    ).exists()


def object_grantees(*, tenant: Tenant, perm: str, obj: models.Model) -> list[User]:
    """Active members of `tenant` holding `perm` on `obj` by object grant."""
    if getattr(obj, "tenant_id", None) != tenant.pk:
        return []
    app_label, _, codename = perm.partition(".")
    user_ids = UserObjectPermission.objects.filter(
        permission__codename=codename,
        permission__content_type__app_label=app_label,
        content_type=ContentType.objects.get_for_model(obj),
        object_pk=str(obj.pk),
    ).values("user_id")
    return list(
        User.objects.filter(
            pk__in=user_ids, memberships__tenant=tenant, memberships__is_active=True
        ).order_by("email")
    )
