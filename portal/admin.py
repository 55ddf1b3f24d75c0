"""The platform admin at /admin/: operators manage clinics, never clinical data.

Nothing clinical is registered here, so an operator sees no PHI by default. User
accounts of clinic members and patients are managed by each clinic's tenant admin;
this site lists only platform operators.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.selectors import tenant_holds_objects
from portal.admin_guards import (
    AccountPagesAdminSiteMixin,
    ChangedFieldsMixin,
    GuardedChangeListMixin,
    StepUpAdminSiteMixin,
    changed_fields,
)
from tenants.models import Tenant, User
from tenants.services import tenant_create
from tenants.timezones import time_zone_form_field


class PlatformAdminSite(AccountPagesAdminSiteMixin, StepUpAdminSiteMixin, admin.AdminSite):
    site_header = "Platform operations"
    site_title = "Platform operations"
    index_title = "Clinics and operators"
    enable_nav_sidebar = False

    def has_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # One sign-in page for everyone: throttled, second factor, audited.
        if request.user.is_authenticated:
            raise PermissionDenied("Platform administration is for operators.")
        return redirect_to_login(request.get_full_path())


platform_admin_site = PlatformAdminSite(name="platform_admin")


class AuditedAdmin(ChangedFieldsMixin, GuardedChangeListMixin, admin.ModelAdmin):
    def _audit(
        self, request: HttpRequest, obj: Any, operation: str, fields: list[str] | None = None
    ) -> None:
        detail = {"operation": operation, "model": obj._meta.label_lower, "site": "platform"}
        audit.record(
            actor=Actor.from_request(request),
            action=Action.ADMIN_ACTION,
            target=obj,
            tenant=obj if isinstance(obj, Tenant) else None,
            detail={**detail, "fields": fields} if fields is not None else detail,
        )

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        self._audit(request, obj, "add")

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        self._audit(request, obj, "change", fields=changed_fields(request))

    def log_deletions(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self._audit(request, obj, "delete")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> Any:
        from django.http import Http404

        raise Http404("History is in the audit log")


STORAGE_FIELDS = ("storage_backend", "storage_bucket", "storage_region")


@admin.register(Tenant, site=platform_admin_site)
class TenantPlatformAdmin(AuditedAdmin):
    list_display = ["name", "slug", "status", "storage_backend", "storage_region", "created_at"]
    list_filter = ["status", "storage_backend"]
    search_fields = ["name", "slug"]
    fields = [
        "name",
        "slug",
        "time_zone",
        "status",
        "storage_backend",
        "storage_bucket",
        "storage_region",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        if tenant_holds_objects(tenant=obj):
            # Objects are read where the clinic's storage fields say now: changing them
            # would leave every stored image behind. Moving a clinic is a migration.
            return ["slug", *STORAGE_FIELDS]
        return ["slug"]

    def formfield_for_dbfield(
        self, db_field: models.Field, request: HttpRequest, **kwargs: Any
    ) -> Any:
        if db_field.name == "time_zone":
            return time_zone_form_field()
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = tenant_create(
            slug=obj.slug,
            name=obj.name,
            time_zone=obj.time_zone,
            actor=Actor.from_request(request),
        )
        for field in ("status", *STORAGE_FIELDS):
            setattr(created, field, getattr(obj, field))
        created.save()
        obj.pk = created.pk
        obj._state.adding = False


@admin.register(User, site=platform_admin_site)
class OperatorAdmin(AuditedAdmin):
    list_display = ["email", "full_name", "is_active", "is_superuser", "last_login"]
    fields = ["email", "full_name", "is_active", "is_staff", "is_superuser"]
    search_fields = ["email"]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).filter(is_staff=True)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # operators are created with `manage.py create_operator` (audited)
