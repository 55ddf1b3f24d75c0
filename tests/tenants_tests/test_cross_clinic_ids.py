"""Sweep every clinic URL with another clinic's real ids, asked under the caller's own clinic.

`test_isolation_sweep` proves that a non-member is stopped at a clinic's door. This sweep
goes past the door: a member of south holding every role asks south's own pages for
north's objects (study, patient, share, invitations, portal account, grantee, the tenant
admin's rows, and the DICOM UIDs the clinic's DICOMweb takes). Each answer must be the
one a freshly made-up id gets, byte for byte, and north must be left exactly as it was.

The caller is swept twice: as a stranger to north, and as a person north also knows (a
referring physician granted the study, and the patient linked to it). Lookups that go by
the person instead of the clinic leak only to the second.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.test import Client
from guardian.models import UserObjectPermission

from audit.models import AuditEvent
from tenants.models import Tenant
from tests.helpers import make_member
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.url_sweep import (
    ADMIN_MODELS,
    FIXED,
    admin_model,
    clinic_objects,
    id_routes,
    made_up,
    seen,
    url_for,
)

METHODS = ("get", "head", "post")


@pytest.fixture(params=["stranger", "known-to-north"])
def north_ids(request, clinic, other_tenant_all_roles) -> dict[str, str]:
    """North's objects. Known to north, the south member is also its referring physician
    granted the study and the patient linked to it; a stranger is neither."""
    if request.param == "known-to-north":
        known = other_tenant_all_roles
    else:
        known = make_member(clinic, "radiologist", email="colleague@north.example")
    return clinic_objects(clinic, known=known)


def north_state(tenant: Tenant) -> dict:
    """Every row north owns, its own row, and every per-object grant."""
    state = {"tenant": list(Tenant.objects.filter(pk=tenant.pk).values())}
    for model in apps.get_models():
        if any(f.name == "tenant" for f in model._meta.concrete_fields):
            manager = model._default_manager
            rows = manager.for_tenant(tenant) if hasattr(manager, "for_tenant") else None
            if rows is None:
                rows = manager.filter(tenant=tenant)
            state[model._meta.label] = sorted(map(repr, rows.values()))
    state["grants"] = sorted(map(repr, UserObjectPermission.objects.values()))
    return state


def _events(tenant: Tenant, after: int) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.for_tenant(tenant)
        .filter(seq__gt=after)
        .order_by("seq")
        .values_list("action", "outcome")
    )


def _last_seq(tenant: Tenant) -> int:
    last = AuditEvent.objects.for_tenant(tenant).order_by("-seq").first()
    return last.seq if last else 0


def ask(client: Client, method: str, url: str, *, south: Tenant) -> tuple[object, list]:
    after = _last_seq(south)
    response = getattr(client, method)(url)
    return response, _events(south, after)


def sweep(client: Client, *, north: Tenant, south: Tenant, victim: dict) -> dict[str, list]:
    """(URL, method) pairs whose answer for north's ids differs from a made-up id's."""
    missing = made_up(victim)
    found = {"differs": [], "audited_differently": [], "swept": []}
    for name, route, groups in id_routes(south.slug):
        victim_url = url_for(name, route, groups, slug=south.slug, ids=victim)
        missing_url = url_for(name, route, groups, slug=south.slug, ids=missing)
        for method in METHODS:
            expected, expected_events = ask(client, method, missing_url, south=south)
            answer, events = ask(client, method, victim_url, south=south)
            found["swept"].append((method, route))
            if seen(answer, victim) != seen(expected, missing):
                found["differs"].append((method, victim_url, answer.status_code))
            if events != expected_events:
                found["audited_differently"].append((method, victim_url, events))
    return found


@pytest.mark.django_db
def test_another_clinics_ids_under_ones_own_clinic_are_answered_as_made_up_ones(
    clinic, other_clinic, north_ids, other_tenant_all_roles, client_for
):
    client = client_for(other_tenant_all_roles)  # signing in is audited in each clinic
    before = north_state(clinic)

    found = sweep(client, north=clinic, south=other_clinic, victim=north_ids)

    assert found["differs"] == []
    assert found["audited_differently"] == []
    assert north_state(clinic) == before
    # Not vacuous: the study, viewer, portal, share, DICOMweb and admin pages were all asked.
    swept = {route for _, route in found["swept"]}
    for fragment in (
        "studies/<uuid:study_id>/",
        "my/studies/<uuid:study_id>/",
        "patients/<uuid:patient_id>/portal/",
        "shares/<uuid:share_id>/revoke/",
        "dicomweb/studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/",
        "admin/tenants/apitoken/<path:object_id>/change/",
    ):
        assert any(fragment in route for route in swept), fragment
    own = ingest_study(other_clinic, synthetic_ct(slices=1, size=16))
    assert client.get(f"/t/south/studies/{own.pk}/").status_code == 200  # the caller may look


@pytest.mark.django_db
def test_the_sweep_fills_every_id_a_clinic_url_takes(other_clinic, north_ids):
    groups = {g for _, _, gs in id_routes(other_clinic.slug) for g in gs}
    admin_models = {
        admin_model(name) for name, _, gs in id_routes(other_clinic.slug) if "object_id" in gs
    }

    # A new kind of id must be taught to the sweep: it is never filled with a placeholder.
    assert groups - {"tenant_slug", "object_id"} - set(FIXED) <= set(north_ids)
    assert admin_models <= ADMIN_MODELS <= set(north_ids)
