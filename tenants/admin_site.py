"""The tenant admin: Django's admin, scoped to the clinic in the URL.

Every ModelAdmin registered here derives from `TenantScopedModelAdmin`, which scopes
querysets and choice fields to `request.tenant`, answers 404 for rows of other
clinics (the same as for missing ones), and writes its changes to the audit log
instead of Django's unscoped LogEntry table.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse

import audit
from audit.actors import Actor
from audit.models import Action
from portal.admin_guards import (
    AccountPagesAdminSiteMixin,
    ChangedFieldsMixin,
    GuardedChangeListMixin,
    StepUpAdminSiteMixin,
    changed_fields,
)
from tenants.access import has_clinic_perm
from tenants.roles import Perm
from tenants.scoping import TenantOwnedModel


class TenantAdminSite(AccountPagesAdminSiteMixin, StepUpAdminSiteMixin, admin.AdminSite):
    site_header = "Clinic administration"
    site_title = "Clinic administration"
    index_title = "Manage your clinic"
    enable_nav_sidebar = False
    final_catch_all_view = False

    def get_urls(self) -> list[Any]:
        # Django's view_on_site shortcut looks objects up without a tenant; not here.
        return [url for url in super().get_urls() if getattr(url, "name", None) != "view_on_site"]

    def has_permission(self, request: HttpRequest) -> bool:
        return (
            request.user.is_active
            and getattr(request, "tenant", None) is not None
            and has_clinic_perm(request, Perm.CLINIC_MANAGE)
        )

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            context["site_header"] = f"{tenant.name}: clinic administration"
        return context

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.user.is_authenticated:
            raise PermissionDenied("Your role in this clinic does not include administration.")
        return redirect_to_login(request.get_full_path())

    def admin_view(self, view: Any, cacheable: bool = False) -> Any:
        inner = super().admin_view(view, cacheable)

        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.user.is_authenticated and not self.has_permission(request):
                raise PermissionDenied("Your role in this clinic does not include administration.")
            return inner(request, *args, **kwargs)

        return guarded


tenant_admin_site = TenantAdminSite(name="tenant_admin")


class TenantScopedModelAdmin(ChangedFieldsMixin, GuardedChangeListMixin, admin.ModelAdmin):
    required_perm = Perm.CLINIC_MANAGE
    view_on_site = False
    # Set when the form's constructor takes `tenant=` (to validate against the clinic).
    form_takes_tenant = False

    def get_urls(self) -> list[Any]:
        # Drop the admin's catch-all "<object_id>/" redirect: it answers 302 for any id,
        # where every other URL answers 404 for ids outside the clinic.
        return [url for url in super().get_urls() if url.name]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return self.scope(super().get_queryset(request), request)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        if not self.form_takes_tenant:
            return form_class
        tenant = request.tenant

        class ClinicForm(form_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, tenant=tenant, **kw)

        return ClinicForm

    def scope(self, queryset: models.QuerySet, request: HttpRequest) -> models.QuerySet:
        return queryset.filter(tenant=request.tenant)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        related = db_field.related_model
        if issubclass(related, TenantOwnedModel):
            kwargs["queryset"] = related.objects.for_tenant(request.tenant)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        related = db_field.related_model
        if issubclass(related, TenantOwnedModel):
            kwargs["queryset"] = related.objects.for_tenant(request.tenant)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def _allowed(self, request: HttpRequest) -> bool:
        return has_clinic_perm(request, self.required_perm)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # clinic rows are deactivated, never deleted, so history stays whole

    def _get_obj_does_not_exist_redirect(
        self, request: HttpRequest, opts: Any, object_id: str
    ) -> HttpResponse:
        raise Http404("Not found")

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("Not found")
        return obj

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> Any:
        raise Http404("History is in the clinic's audit log")

    # Django's LogEntry is one table for every clinic; the audit chain replaces it.
    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        self._audit(request, obj, "add")

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        self._audit(request, obj, "change", fields=changed_fields(request))

    def log_deletions(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self._audit(request, obj, "delete")

    def _audit(
        self, request: HttpRequest, obj: Any, operation: str, fields: list[str] | None = None
    ) -> None:
        detail = {"operation": operation, "model": obj._meta.label_lower}
        audit.record(
            actor=Actor.from_request(request),
            action=Action.ADMIN_ACTION,
            target=obj,
            tenant=request.tenant,
            detail={**detail, "fields": fields} if fields is not None else detail,
        )
