"""Per-object grants stay inside the clinic whatever guardian's tables say."""

from __future__ import annotations

import pytest
from guardian.shortcuts import assign_perm

from audit.models import Action, AuditEvent
from tenants.grants import GrantError, object_grant, object_granted, object_revoke, objects_granted
from tenants.models import Membership
from tenants.scoping import TenantScopeError
from tests.helpers import TEST_ACTOR, make_member, membership_of

PERM = "tenants.view_membership"


@pytest.mark.django_db
def test_grant_opens_one_object_and_is_audited(clinic, referring_physician, radiologist):
    target = membership_of(radiologist, clinic)

    object_grant(tenant=clinic, user=referring_physician, perm=PERM, obj=target, actor=TEST_ACTOR)

    granted = objects_granted(
        tenant=clinic, user=referring_physician, perm=PERM, queryset=Membership.objects.all()
    )
    assert list(granted) == [target]
    assert object_granted(tenant=clinic, user=referring_physician, perm=PERM, obj=target)
    assert (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.GRANT_ADDED, target_id=str(target.pk))
        .exists()
    )


@pytest.mark.django_db
def test_revoke_closes_it(clinic, referring_physician, radiologist):
    target = membership_of(radiologist, clinic)
    object_grant(tenant=clinic, user=referring_physician, perm=PERM, obj=target, actor=TEST_ACTOR)

    object_revoke(tenant=clinic, user=referring_physician, perm=PERM, obj=target, actor=TEST_ACTOR)

    assert not object_granted(tenant=clinic, user=referring_physician, perm=PERM, obj=target)


@pytest.mark.django_db
def test_grant_on_another_clinics_object_is_refused(clinic, other_clinic, referring_physician):
    foreign = membership_of(make_member(other_clinic, "radiologist"), other_clinic)

    with pytest.raises(TenantScopeError):
        object_grant(
            tenant=clinic, user=referring_physician, perm=PERM, obj=foreign, actor=TEST_ACTOR
        )


@pytest.mark.django_db
def test_grant_to_a_non_member_is_refused(clinic, other_clinic, radiologist):
    outsider = make_member(other_clinic, "referring_physician")

    with pytest.raises(GrantError):
        object_grant(
            tenant=clinic,
            user=outsider,
            perm=PERM,
            obj=membership_of(radiologist, clinic),
            actor=TEST_ACTOR,
        )


@pytest.mark.django_db
def test_stray_grant_on_another_clinics_row_never_shows(clinic, other_clinic, referring_physician):
    foreign = membership_of(make_member(other_clinic, "radiologist"), other_clinic)
    assign_perm(PERM, referring_physician, foreign)

    granted = objects_granted(
        tenant=clinic, user=referring_physician, perm=PERM, queryset=Membership.objects.all()
    )

    assert list(granted) == []
    assert not object_granted(tenant=clinic, user=referring_physician, perm=PERM, obj=foreign)
