"""A change and its audit event commit together, or neither does: service by service.

`test_chain` proves that `audit.record` joins its caller's transaction. Here each
service that changes something and audits it has its own audit write fail: the service
must raise, and the database must be left exactly as it was (no change without its
event). Moving a service's `audit.record` out of its transaction fails this test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.apps import apps
from django.db import DatabaseError
from django.utils import timezone

from audit import recorder
from audit.models import Action, AuditEvent
from imaging.ingest import ingest_bytes
from imaging.selectors import study_target
from imaging.services import study_grant, study_grant_revoke, study_set_confidential
from imaging.storage import object_keys, storage_for
from sharing.invitations import invitation_accept, patient_invite, patient_link_revoke
from sharing.services import share_create, share_revoke
from tenants.breakglass import break_glass_open
from tenants.invitations import staff_invite
from tenants.models import Tenant
from tenants.services import membership_update, tenant_update_policy
from tenants.tokens import api_token_create
from tests.helpers import TEST_ACTOR, make_member, membership_of, sharer
from tests.imaging_tests.helpers import INGEST_ACTOR, ingest_study, synthetic_ct

REASON = "Patient in the emergency room, the radiologist on call is away."


class AuditWriteFailed(DatabaseError):
    pass


@pytest.fixture
def people(clinic, radiologist, front_desk, tenant_admin) -> dict:
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    return {
        "clinic": clinic,
        "study": study,
        "radiologist": radiologist,
        "front_desk": front_desk,
        "tenant_admin": tenant_admin,
        "physician": make_member(clinic, "referring_physician", email="gp@north.example"),
        "now": timezone.now(),
    }


def _confidential(p):
    return lambda: study_set_confidential(
        study=p["study"], confidential=True, by=p["radiologist"], actor=TEST_ACTOR
    )


def _grant(p):
    return lambda: study_grant(
        study=p["study"], grantee=p["physician"], download=True, actor=TEST_ACTOR
    )


def _grant_revoke(p):
    _grant(p)()
    return lambda: study_grant_revoke(study=p["study"], grantee=p["physician"], actor=TEST_ACTOR)


# Each change re-reads what it changes: a failed call may have changed the copy in memory.


def _roles(p):
    return lambda: membership_update(
        membership=membership_of(p["physician"], p["clinic"]),
        roles={"referring_physician", "technologist"},
        is_active=True,
        actor=TEST_ACTOR,
    )


def _deactivate(p):
    return lambda: membership_update(
        membership=membership_of(p["physician"], p["clinic"]),
        roles={"referring_physician"},
        is_active=False,
        actor=TEST_ACTOR,
    )


def _share(p):
    return lambda: share_create(
        study=p["study"],
        actor=TEST_ACTOR,
        now=p["now"],
        **sharer(p["radiologist"], p["clinic"]),
        pin="2468",
    )


def _share_revoke(p):
    share, _ = _share(p)()
    return lambda: share_revoke(share=share, actor=TEST_ACTOR, now=p["now"])


def _break_glass(p):
    study_set_confidential(
        study=p["study"], confidential=True, by=p["tenant_admin"], actor=TEST_ACTOR
    )
    return lambda: break_glass_open(
        membership=membership_of(p["radiologist"], p["clinic"]),
        target=study_target(p["study"]),
        reason=REASON,
        actor=TEST_ACTOR,
        now=p["now"],
    )


def _patient_invite(p, email: str = "jane@example.org"):
    return lambda: patient_invite(
        tenant=p["clinic"],
        patients=[p["study"].patient],
        email=email,
        invited_by=p["front_desk"],
        actor=TEST_ACTOR,
        now=p["now"],
    )


def _patient_link(p):
    invitation = _patient_invite(p, p["physician"].email)()
    return lambda: invitation_accept(
        invitation=invitation, user=p["physician"], actor=TEST_ACTOR, now=p["now"]
    )


def _patient_unlink(p):
    (link,) = _patient_link(p)()
    return lambda: patient_link_revoke(link=link, actor=TEST_ACTOR, now=p["now"])


def _staff_invite(p):
    return lambda: staff_invite(
        tenant=p["clinic"],
        email="new.tech@example.org",
        roles=["technologist"],
        invited_by=p["tenant_admin"],
        actor=TEST_ACTOR,
        now=p["now"],
    )


def _token(p):
    return lambda: api_token_create(
        tenant=p["clinic"], name="RIS", scopes=["dicomweb:read"], actor=TEST_ACTOR, now=p["now"]
    )


def _policy(p):
    return lambda: tenant_update_policy(
        tenant=Tenant.objects.get(pk=p["clinic"].pk),
        actor=TEST_ACTOR,
        changes={"share_link_max_days": 7},
    )


def _ingest(p):
    (data,) = synthetic_ct(slices=1, size=16, patient_id="NEW-1")
    return lambda: ingest_bytes(tenant=p["clinic"], actor=INGEST_ACTOR, data=data, name="a.dcm")


CASES: dict[str, tuple[Action, Callable]] = {
    "confidential": (Action.STUDY_CONFIDENTIALITY_CHANGED, _confidential),
    "grant": (Action.GRANT_ADDED, _grant),
    "grant revoked": (Action.GRANT_REVOKED, _grant_revoke),
    "roles changed": (Action.MEMBERSHIP_ROLES_CHANGED, _roles),
    "member deactivated": (Action.MEMBERSHIP_DEACTIVATED, _deactivate),
    "share created": (Action.SHARE_CREATED, _share),
    "share revoked": (Action.SHARE_REVOKED, _share_revoke),
    "break-glass": (Action.BREAK_GLASS_OPENED, _break_glass),
    "patient invited": (Action.PATIENT_INVITED, _patient_invite),
    "patient linked": (Action.PATIENT_LINKED, _patient_link),
    "patient unlinked": (Action.PATIENT_UNLINKED, _patient_unlink),
    "staff invited": (Action.STAFF_INVITED, _staff_invite),
    "token created": (Action.API_TOKEN_CREATED, _token),
    "policy changed": (Action.TENANT_UPDATED, _policy),
    "instance stored": (Action.INSTANCE_STORED, _ingest),
}


def audit_fails_for(patched: pytest.MonkeyPatch, action: Action) -> list[Action]:
    """Every audit append naming `action` fails, as a full disk or a lost connection
    would fail it; the others go through. Returns the actions that were refused."""
    real, refused = recorder.record_many, []

    def record_many(**kwargs):
        actions = [entry.action for entry in kwargs["entries"]]
        if action in actions:
            refused.append(action)
            raise AuditWriteFailed("the audit append failed")
        return real(**kwargs)

    patched.setattr(recorder, "record_many", record_many)
    return refused


def database_rows() -> dict[str, list[str]]:
    """Every row of every table, as the database holds it."""
    return {
        model._meta.label: sorted(map(repr, model._base_manager.values()))
        for model in apps.get_models()
    }


def stored_objects(clinic) -> list[str]:
    return sorted(object_keys(storage_for(clinic), str(clinic.pk)))


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES)
def test_a_change_whose_audit_event_cannot_be_written_is_not_made(
    case, people, monkeypatch, data_dir
):
    action, prepare = CASES[case]
    change = prepare(people)
    rows, objects = database_rows(), stored_objects(people["clinic"])

    with monkeypatch.context() as patched:
        refused = audit_fails_for(patched, action)
        with pytest.raises(AuditWriteFailed):
            change()

    assert refused == [action]  # the service did try to audit it
    assert database_rows() == rows
    assert stored_objects(people["clinic"]) == objects  # no object left without its row
    # Not vacuous: once the audit can be written, the same call changes the database.
    change()
    assert database_rows() != rows
    assert AuditEvent.objects.for_tenant(people["clinic"]).filter(action=action).exists()
