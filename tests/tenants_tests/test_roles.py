"""Each role reaches exactly what the matrix allows, on pages, in the admin and via DRF."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.http import Http404
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from tenants.access import HasClinicPerm
from tenants.models import Role
from tenants.roles import MATRIX, Perm, RoleCode, render_markdown
from tests.helpers import make_member, membership_of

PAGES = {
    "worklist": "/t/north/",
    "audit": "/t/north/audit/",
    "admin": "/t/north/admin/",
    "admin_members": "/t/north/admin/tenants/membership/",
    "admin_policy": "/t/north/admin/tenants/tenant/",
    "my_studies": "/t/north/my/",
}

# Written out by hand on purpose: this is the policy, the matrix must implement it.
REACHABLE = {
    "tenant_admin": {"admin", "admin_members", "admin_policy"},
    "radiologist": {"worklist"},
    "technologist": {"worklist"},
    "front_desk": {"worklist"},
    "referring_physician": {"worklist"},
    "privacy_officer": {"audit"},
    "patient": {"my_studies"},
}


@pytest.mark.django_db
@pytest.mark.parametrize("role", sorted(REACHABLE))
def test_each_role_reaches_exactly_its_pages(role, clinic, client_for):
    client = client_for(make_member(clinic, role))

    statuses = {page: client.get(url).status_code for page, url in PAGES.items()}

    assert {page for page, status in statuses.items() if status == 200} == REACHABLE[role]
    assert {status for page, status in statuses.items() if page not in REACHABLE[role]} == {403}


@pytest.mark.django_db
def test_several_roles_reach_the_union(clinic, client_for):
    client = client_for(make_member(clinic, "tenant_admin", "radiologist"))

    assert client.get(PAGES["worklist"]).status_code == 200
    assert client.get(PAGES["admin"]).status_code == 200
    assert client.get(PAGES["audit"]).status_code == 403


def test_least_privilege_in_the_matrix():
    no_images = {RoleCode.TENANT_ADMIN, RoleCode.FRONT_DESK, RoleCode.PRIVACY_OFFICER}
    for role in no_images:
        assert Perm.IMAGES_VIEW not in MATRIX[role], role
    assert Perm.WORKLIST_VIEW not in MATRIX[RoleCode.REFERRING_PHYSICIAN]
    assert MATRIX[RoleCode.PRIVACY_OFFICER] == {Perm.AUDIT_READ}
    assert MATRIX[RoleCode.PATIENT] == {Perm.OWN_STUDIES}
    assert [role for role in RoleCode if Perm.CLINIC_MANAGE in MATRIX[role]] == [
        RoleCode.TENANT_ADMIN
    ]


@pytest.mark.django_db
def test_role_rows_mirror_the_code():
    assert set(Role.objects.values_list("code", flat=True)) == {role.value for role in RoleCode}


def test_roles_doc_is_generated_from_the_matrix():
    doc = Path(__file__).resolve().parents[2] / "docs" / "roles.md"

    assert doc.read_text(encoding="utf-8") == render_markdown(), "run manage.py roles_doc"


@pytest.mark.django_db
def test_roles_doc_command_writes_the_doc(settings, tmp_path):
    (tmp_path / "docs").mkdir()
    settings.BASE_DIR = tmp_path

    call_command("roles_doc")

    assert (tmp_path / "docs" / "roles.md").read_text() == render_markdown()


class _AuditApi(APIView):
    required_perms = (Perm.AUDIT_READ,)

    def get(self, request):
        from rest_framework.response import Response

        return Response({"ok": True})


def _api_request(tenant, membership, user=None):
    request = APIRequestFactory().get("/api/v1/probe")
    request.tenant = tenant
    request.membership = membership
    request.user = user or (membership.user if membership else None)
    return request


@pytest.mark.django_db
def test_drf_permission_follows_the_matrix(clinic, privacy_officer, radiologist):
    view = _AuditApi()
    permission = HasClinicPerm()

    allowed = permission.has_permission(
        _api_request(clinic, membership_of(privacy_officer, clinic)), view
    )
    denied = permission.has_permission(
        _api_request(clinic, membership_of(radiologist, clinic)), view
    )

    assert allowed is True
    assert denied is False


@pytest.mark.django_db
def test_drf_permission_is_404_without_a_clinic_and_closed_without_perms(radiologist):
    with pytest.raises(Http404):
        HasClinicPerm().has_permission(_api_request(None, None, radiologist), _AuditApi())
    assert HasClinicPerm().has_permission(_api_request(None, None, radiologist), APIView()) is False
    assert HasClinicPerm().has_permission(_api_request(None, None), _AuditApi()) is False
