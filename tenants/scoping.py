"""Tenant scoping that fails closed.

A query on a tenant-owned model must say which clinic it is for, either through
`.for_tenant(tenant)` or an explicit `.filter(tenant=...)`. A query that reaches the
database without one raises `TenantScopeError` instead of silently returning every
clinic's rows. Querysets reached through a related object (`membership.roles`,
`patient.studies`) are scoped by their parent, which was itself loaded scoped.

Platform code that really must cross clinics (audit verification, migrations,
platform operators) says so with `.unscoped(reason=...)`, which is easy to grep for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models.expressions import Col
from django.db.models.lookups import Exact, In
from django.db.models.sql.where import AND, WhereNode

if TYPE_CHECKING:
    from tenants.models import Tenant


class TenantScopeError(RuntimeError):
    """A tenant-owned model was queried without naming the clinic."""


def _concrete(value: Any) -> bool:
    """A literal tenant (or list of them), not an expression or subquery."""
    if value is None or hasattr(value, "resolve_expression"):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return bool(value) and all(_concrete(item) for item in value)
    return True


def _filters_on_tenant(where: WhereNode, model: type[models.Model], alias: str) -> bool:
    """True when an AND-chain of the WHERE clause pins the base table's tenant column
    to concrete values (not a joined table's, not an F() or a subquery)."""
    if where.connector != AND or where.negated:
        return False
    for child in where.children:
        if isinstance(child, WhereNode):
            if _filters_on_tenant(child, model, alias):
                return True
            continue
        if isinstance(child, (Exact, In)) and isinstance(child.lhs, Col):
            target = child.lhs.target
            if (
                target.attname == "tenant_id"
                and child.lhs.alias == alias
                and issubclass(model, target.model)
                and _concrete(child.rhs)
            ):
                return True
    return False


class TenantQuerySet(models.QuerySet):
    _unscoped_reason: str | None = None

    def for_tenant(self, tenant: Tenant) -> TenantQuerySet:
        if tenant is None or getattr(tenant, "pk", None) is None:
            raise TenantScopeError(f"{self.model.__name__}.for_tenant() needs a saved tenant")
        return self.filter(tenant=tenant)

    def unscoped(self, *, reason: str) -> TenantQuerySet:
        """Query across clinics on purpose; `reason` documents why at the call site."""
        if not reason:
            raise TenantScopeError("unscoped() needs a reason")
        clone = self._chain()
        clone._unscoped_reason = reason
        return clone

    def _clone(self) -> TenantQuerySet:
        clone = super()._clone()
        clone._unscoped_reason = self._unscoped_reason
        return clone

    def _check_scope(self) -> None:
        if self._unscoped_reason or "instance" in self._hints:
            return
        if not _filters_on_tenant(self.query.where, self.model, self.query.base_table):
            raise TenantScopeError(
                f"Query on {self.model.__name__} without a tenant: use "
                f"{self.model.__name__}.objects.for_tenant(tenant) or a tenant-scoped selector"
            )

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._check_scope()
        super()._fetch_all()

    def iterator(self, chunk_size: int | None = None) -> Any:
        self._check_scope()
        return super().iterator(chunk_size=chunk_size)

    def count(self) -> int:
        if self._result_cache is None:
            self._check_scope()
        return super().count()

    def exists(self) -> bool:
        if self._result_cache is None:
            self._check_scope()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._check_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        self._check_scope()
        return super().update(**kwargs)

    def _update(self, values: Any) -> Any:
        self._check_scope()
        return super()._update(values)

    def delete(self) -> tuple[int, dict[str, int]]:
        self._check_scope()
        return super().delete()

    delete.alters_data = True
    delete.queryset_only = True
    update.alters_data = True


class TenantManager(models.Manager.from_queryset(TenantQuerySet)):  # type: ignore[misc]
    """Default manager of every tenant-owned model."""


class TenantOwnedModel(models.Model):
    """Base for rows that belong to one clinic."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")

    objects = TenantManager()

    class Meta:
        abstract = True
