"""What both admin sites (the platform's and each clinic's) add to Django's admin.

Every page of either site needs a recent second factor (a step-up), as downloads do:
members, roles, tokens, clinics and operators are changed here.

Django's admin trusts its query string and its action form more than the rest of the
portal trusts input: any lookup on a model's own fields is allowed (`?email__regex=(`
is a database error, so a 500), and an action runs `pk__in` on whatever ids were
posted (`_selected_action=nope` is a 500 too). Here a changelist filters only by what
its sidebar offers, values holding NUL are refused, and an action's ids are checked
first: each a clear 400 or message, never a 500.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.core.exceptions import SuspiciousOperation, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from tenants.mfa import step_up_is_fresh, step_up_redirect


class _OfferedFiltersOnly:
    """For ChangeLists: the query string may hold only what the list's filters produce.

    Each list filter takes the parameters it expects (`expected_parameters()`, and the
    date hierarchy its year, month and day) out of the query string; anything left would
    go to the database as a lookup of its own (`?is_active__regex=(` is a database
    error). It is refused before any query runs.
    """

    def get_filters(self, request: HttpRequest) -> tuple[Any, ...]:
        sent = set(self.get_filters_params())  # type: ignore[attr-defined]
        specs, has_filters, remaining, duplicates, active = super().get_filters(request)  # type: ignore[misc]
        unoffered = sorted(sent.intersection(remaining))
        if unoffered:
            raise DisallowedModelAdminLookup(f"Filtering by {unoffered[0]} not allowed")
        return specs, has_filters, remaining, duplicates, active


@cache
def _guarded_changelist(changelist: type) -> type:
    return type(changelist.__name__, (_OfferedFiltersOnly, changelist), {})


class GuardedChangeListMixin:
    """For ModelAdmins: filters limited to the sidebar's, NUL refused, action ids checked,
    an empty `_to_field` ignored."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type:
        return _guarded_changelist(super().get_changelist(request, **kwargs))  # type: ignore[misc]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if any("\x00" in value for _, values in request.GET.lists() for value in values):
            raise SuspiciousOperation("A filter or search value holds a NUL character.")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        # Django's change and delete views check `_to_field` only when it is not empty,
        # then look an empty one up as a field name: an error instead of the row.
        return super().get_object(request, object_id, from_field or None)  # type: ignore[misc]

    def response_action(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        pk = self.model._meta.pk  # type: ignore[attr-defined]
        try:
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                pk.to_python(value)
        except ValidationError:
            self.message_user(  # type: ignore[attr-defined]
                request,
                "Choose the rows from the list: one of the ids sent is not a row's id.",
                messages.ERROR,
            )
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)  # type: ignore[misc]


class AccountPagesAdminSiteMixin:
    """For AdminSites: password changes go through the portal's own (audited) page."""

    def password_change(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        return HttpResponseRedirect(reverse("password_change"))

    def password_change_done(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        return HttpResponseRedirect(reverse("account_security"))


class StepUpAdminSiteMixin:
    """For AdminSites: every page needs a second factor verified within the step-up window.

    A session left open, or one taken over, does not reach administration without the
    second factor again. Anyone else gets the site's own answer (sign-in, or refusal).
    Signing out needs nothing: asking for a factor there would keep sessions open.
    """

    def admin_view(self, view: Any, cacheable: bool = False) -> Any:
        inner = super().admin_view(view, cacheable)  # type: ignore[misc]
        if view == self.logout:  # type: ignore[attr-defined]
            return inner

        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if (
                request.user.is_authenticated
                and self.has_permission(request)  # type: ignore[attr-defined]
                and not step_up_is_fresh(request)
            ):
                return step_up_redirect(request)
            return inner(request, *args, **kwargs)

        return guarded


class ChangedFieldsMixin:
    """For ModelAdmins: the names of the fields a change form changed, for its audit event.

    Django's change message holds the fields' labels ("Storage backend"), which change
    with wording and translation; an auditor matches columns. The names are kept on the
    request, not on the ModelAdmin, which every thread shares.
    """

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> Any:
        request.changed_fields = sorted(form.changed_data)  # type: ignore[attr-defined]
        return super().construct_change_message(request, form, formsets, add)  # type: ignore[misc]


def changed_fields(request: HttpRequest) -> list[str]:
    """The fields the request's change form changed (see ChangedFieldsMixin)."""
    return list(getattr(request, "changed_fields", []))
