"""Enforcement of the roles matrix: one decorator for pages, one mixin, one DRF permission."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from tenants.roles import Perm
from tenants.tokens import token_scope_refusal


def has_clinic_perm(request: HttpRequest, *perms: Perm) -> bool:
    """True when the request is inside a clinic and the membership grants any of `perms`."""
    membership = getattr(request, "membership", None)
    return membership is not None and any(membership.has_perm(perm) for perm in perms)


def check_clinic_perm(request: HttpRequest, *perms: Perm) -> None:
    if getattr(request, "tenant", None) is None:
        # Clinic pages only exist under /t/<slug>/, where the middleware resolved one.
        raise Http404("No such clinic")
    if not has_clinic_perm(request, *perms):
        raise PermissionDenied("Your role in this clinic does not allow this.")


def require_perm(
    *perms: Perm,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Allow the view when the member holds any of `perms` in the current clinic."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            check_clinic_perm(request, *perms)
            return view(request, *args, **kwargs)

        wrapped.required_perms = perms  # type: ignore[attr-defined]
        return wrapped

    return decorator


class ClinicPermRequiredMixin:
    """Class-based view counterpart of `require_perm`."""

    required_perms: tuple[Perm, ...] = ()

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not self.required_perms:
            raise PermissionDenied("View declares no permission")
        check_clinic_perm(request, *self.required_perms)
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]


def landing_url(membership: Any) -> str:
    """Where a member lands in a clinic: the first page their roles open."""
    from django.urls import reverse

    from tenants.urlconf import tenant_admin_url

    slug = membership.tenant.slug
    if membership.has_perm(Perm.WORKLIST_VIEW) or membership.has_perm(Perm.STUDY_VIEW_GRANTED):
        return reverse("worklist", kwargs={"tenant_slug": slug})
    if membership.has_perm(Perm.AUDIT_READ):
        return reverse("audit_log", kwargs={"tenant_slug": slug})
    if membership.has_perm(Perm.CLINIC_MANAGE):
        return tenant_admin_url(slug)
    if membership.has_perm(Perm.OWN_STUDIES):
        return reverse("my_studies", kwargs={"tenant_slug": slug})
    return reverse("home")


class HasClinicPerm:
    """The one DRF permission: a partner token's scope, or a member's role permissions.

    A request authenticated by an API token needs the view's `required_scope`; a
    signed-in member needs one of the view's `required_perms` from the roles matrix.
    Without a clinic the answer is 404, like pages, so nothing confirms existence.
    """

    message = "Your role in this clinic does not allow this."

    def has_permission(self, request: Any, view: Any) -> bool:
        token = getattr(request, "api_token", None)
        if token is not None:
            scope = getattr(view, "required_scope", None)
            if scope is None or not token.has_scope(scope):
                self.message = token_scope_refusal(token, scope)
                return False
            return True
        perms = tuple(getattr(view, "required_perms", ()))
        if not perms or not getattr(request.user, "is_authenticated", False):
            return False  # DRF answers 401 with a WWW-Authenticate challenge
        if getattr(request, "tenant", None) is None:
            raise Http404("No such clinic")
        return has_clinic_perm(request, *perms)

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        tenant = getattr(request, "tenant", None)
        return tenant is not None and getattr(obj, "tenant_id", None) == tenant.pk
