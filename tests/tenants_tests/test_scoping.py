"""The tenant-scoped manager fails closed, and interface code never bypasses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.apps import apps
from django.db.models import Q

from audit.models import AuditEvent
from tenants.models import Membership
from tenants.scoping import TenantOwnedModel, TenantScopeError
from tests.helpers import make_member

ROOT = Path(__file__).resolve().parents[2]
INTERFACE_MODULES = ("views.py", "tasks.py", "admin.py", "urls.py")
INTERFACE_PACKAGES = ("api", "dicomweb", "views")


@pytest.mark.django_db
def test_query_without_tenant_raises(radiologist):
    with pytest.raises(TenantScopeError):
        list(Membership.objects.all())
    with pytest.raises(TenantScopeError):
        Membership.objects.get(user=radiologist)
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(is_active=True).count()
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(is_active=True).exists()
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(is_active=True).update(is_active=False)
    with pytest.raises(TenantScopeError):
        Membership.objects.filter(is_active=True).delete()


@pytest.mark.django_db
def test_or_with_tenant_does_not_count_as_scoped(clinic, radiologist):
    with pytest.raises(TenantScopeError):
        list(Membership.objects.filter(Q(tenant=clinic) | Q(user=radiologist)))


@pytest.mark.django_db
def test_for_tenant_returns_only_that_clinics_rows(clinic, other_clinic, radiologist):
    outsider = make_member(other_clinic, "radiologist")

    ours = list(Membership.objects.for_tenant(clinic))
    theirs = list(Membership.objects.filter(tenant=other_clinic))

    assert {m.user for m in ours} == {radiologist}
    assert {m.user for m in theirs} == {outsider}


@pytest.mark.django_db
def test_for_tenant_refuses_none():
    with pytest.raises(TenantScopeError):
        Membership.objects.for_tenant(None)


@pytest.mark.django_db
def test_related_manager_of_a_scoped_parent_is_allowed(clinic, radiologist):
    assert radiologist.memberships.count() == 1


@pytest.mark.django_db
def test_audit_events_are_scoped_too(clinic):
    with pytest.raises(TenantScopeError):
        list(AuditEvent.objects.all())
    assert AuditEvent.objects.for_tenant(clinic).exists()


def _tenant_model_names() -> set[str]:
    names = {
        model.__name__
        for model in apps.get_models()
        if issubclass(model, TenantOwnedModel) or model is AuditEvent
    }
    assert "Membership" in names
    return names


def _interface_files() -> list[Path]:
    files: list[Path] = []
    for app in ("portal", "tenants", "imaging", "audit", "sharing"):
        app_dir = ROOT / app
        files += [app_dir / name for name in INTERFACE_MODULES if (app_dir / name).exists()]
        files += [p for name in INTERFACE_PACKAGES for p in (app_dir / name).rglob("*.py")]
        files += list((app_dir / "management" / "commands").glob("*.py"))
    return files


def _pins_tenant(call: ast.AST | None) -> bool:
    return isinstance(call, ast.Call) and any(
        kw.arg in {"tenant", "tenant_id"} for kw in call.keywords
    )


def _unscoped_uses(path: Path, model_names: set[str], root: Path = ROOT) -> list[str]:
    """`Model.objects.<x>` unless x is for_tenant or a filter pinning the tenant.

    Also flags `_default_manager` and `unscoped`, which interface code has no business using.
    """
    problems = []
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in {"_default_manager", "unscoped"}:
            problems.append(f"{path.relative_to(root)}:{node.lineno} uses {node.attr}")
        value = node.value
        if (
            isinstance(value, ast.Attribute)
            and value.attr == "objects"
            and isinstance(value.value, ast.Name)
            and value.value.id in model_names
            and node.attr != "for_tenant"
            and not (node.attr == "filter" and _pins_tenant(parents.get(node)))
        ):
            problems.append(
                f"{path.relative_to(root)}:{node.lineno} {value.value.id}.objects.{node.attr}"
            )
    return problems


def test_interface_code_never_queries_tenant_models_unscoped():
    model_names = _tenant_model_names()
    files = _interface_files()

    problems = [problem for path in files for problem in _unscoped_uses(path, model_names)]

    assert files, "the scan found no interface modules to check"
    assert problems == []


def test_scan_catches_an_unscoped_query(tmp_path):
    bad = tmp_path / "views.py"
    bad.write_text(
        "def v(request):\n"
        "    Membership.objects.filter(tenant_id=t, pk=1)\n"
        "    return Membership.objects.get(pk=1)\n"
    )

    problems = _unscoped_uses(bad, {"Membership"}, root=tmp_path)

    assert problems == ["views.py:3 Membership.objects.get"]
