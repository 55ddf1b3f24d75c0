"""The tenant admin site's models: members and roles, staff invitations, clinic policy."""

from __future__ import annotations

import functools
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from audit.actors import Actor
from tenants.admin_site import TenantScopedModelAdmin, tenant_admin_site
from tenants.invitations import (
    STAFF_INVITATION_DAYS,
    InvitationInvalid,
    InvitationUnavailable,
    inviter_still_may,
    staff_invitation_revoke,
    staff_invite,
    staff_invite_check,
)
from tenants.models import ApiToken, Membership, Role, StaffInvitation, Tenant
from tenants.roles import STAFF_ROLES, RoleCode
from tenants.services import (
    POLICY_FIELDS,
    LockoutLiftRefused,
    member_lockout_lift,
    membership_update,
    membership_validate_change,
    tenant_update_policy,
)
from tenants.timezones import time_zone_form_field
from tenants.tokens import (
    api_token_check,
    api_token_create,
    api_token_grantable_scopes,
    api_token_revoke,
    scopes_suspended,
)

# Tokens made in the admin expire: a forgotten partner credential must not live forever.
ADMIN_TOKEN_MAX_DAYS = 365
ADMIN_TOKEN_DEFAULT_DAYS = 90


class MembershipForm(forms.ModelForm):
    """Changes a member's roles and active flag. Members join through staff invitations.

    The patient role is neither shown nor offered: that a colleague is the clinic's
    patient is PHI, which administration does not include. A member who is one stays
    one whatever is saved here (`roles_kept`).
    """

    roles = forms.ModelMultipleChoiceField(
        queryset=Role.objects.exclude(code=RoleCode.PATIENT), widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Membership
        fields = ["is_active"]

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.initial["roles"] = list(self.instance.roles.exclude(code=RoleCode.PATIENT))

    @functools.cached_property
    def current(self) -> Membership:
        """The membership as stored (the instance carries the form's changes)."""
        return Membership.objects.for_tenant(self.tenant).get(pk=self.instance.pk)

    def roles_kept(self) -> set[str]:
        """The roles to save: those chosen, and the patient role if the member has it."""
        chosen = {role.code for role in self.cleaned_data["roles"]}
        return chosen | (self.current.role_codes & {RoleCode.PATIENT})

    # The administrator editing, set by MembershipAdmin.get_form.
    editor_id: Any = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "roles" in cleaned:
            current = self.current
            wanted = self.roles_kept()
            if current.user_id == self.editor_id and wanted - current.role_codes:
                # Separation of duties: an administrator who sees no images must not
                # be able to give themselves a clinical role (and with it images, or a
                # token that reads them) without anyone else taking part.
                raise ValidationError(
                    "You cannot give yourself a role. Another administrator of the clinic "
                    "must do it, or a platform operator."
                )
            if wanted & STAFF_ROLES and not current.role_codes & STAFF_ROLES:
                # A patient becomes staff only by accepting an invitation: their consent.
                raise ValidationError(
                    "A patient joins the staff by accepting a staff invitation; send one "
                    "under Staff invitations."
                )
            membership_validate_change(
                membership=current,
                roles=wanted,
                active=cleaned.get("is_active", True),
            )
        return cleaned


class StaffRoleFilter(admin.SimpleListFilter):
    """Filter by a staff role; the patient role is not one to filter colleagues by."""

    title = "role"
    parameter_name = "role"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        roles = Role.objects.filter(code__in=STAFF_ROLES).order_by("name")
        return [(role.code, role.name) for role in roles]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        value = self.value()
        if value in STAFF_ROLES:
            return queryset.filter(roles__code=value)
        return queryset


@admin.register(Membership, site=tenant_admin_site)
class MembershipAdmin(TenantScopedModelAdmin):
    form = MembershipForm
    form_takes_tenant = True
    list_display = ["email", "full_name", "role_list", "is_active", "created_at"]
    list_filter = ["is_active", StaffRoleFilter]
    search_fields = ["user__email", "user__full_name"]
    ordering = ["user__email"]
    list_select_related = ["user"]
    actions = ["unlock_sign_in"]

    @admin.action(description="Lift sign-in lockout of the selected members")
    def unlock_sign_in(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        actor = Actor.from_request(request)
        lifted, refused = 0, []
        for membership in queryset.select_related("tenant", "user"):
            try:
                member_lockout_lift(membership=membership, actor=actor)
            except LockoutLiftRefused as exc:
                refused.append((membership.user.email, exc.message))
            else:
                lifted += 1
        if lifted:
            self.message_user(request, f"Lockout lifted for {lifted} member(s).")
        for email, reason in refused:
            self.message_user(request, f"{email}: {reason}", messages.WARNING)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        return type(form_class.__name__, (form_class,), {"editor_id": request.user.pk})

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        # Staff only: a patient's portal account (its name, its email, the fact that
        # they are this clinic's patient) is PHI, which administration does not include.
        # Their accounts are managed from the patient's record, by staff who may see it.
        roles = Membership.roles.through.objects.filter(membership__tenant=request.tenant)
        patients = roles.filter(role__code=RoleCode.PATIENT).values("membership_id")
        staff = roles.filter(role__code__in=STAFF_ROLES).values("membership_id")
        return (
            super()
            .get_queryset(request)
            .exclude(models.Q(pk__in=patients) & ~models.Q(pk__in=staff))
            .prefetch_related("roles")
        )

    fields = ["email", "full_name", "roles", "is_active"]
    readonly_fields = ["email", "full_name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Adding by email would attach whatever account holds the address (a patient,
        # another clinic's staff) without its holder's consent and show its name: people
        # join through a staff invitation they accept.
        return False

    @admin.display(description="Email", ordering="user__email")
    def email(self, obj: Membership) -> str:
        return obj.user.email

    @admin.display(description="Name", ordering="user__full_name")
    def full_name(self, obj: Membership) -> str:
        return obj.user.full_name

    @admin.display(description="Roles")
    def role_list(self, obj: Membership) -> str:
        staff = (role.name for role in obj.roles.all() if role.code != RoleCode.PATIENT)
        return ", ".join(sorted(staff))

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, obj: Any = None, **kw: Any
    ) -> Any:
        if obj is not None:
            context["subtitle"] = obj.user.email  # staff, not PHI: the admin lists it too
        return super().render_change_form(request, context, *args, obj=obj, **kw)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        current = Membership.objects.for_tenant(request.tenant).get(pk=obj.pk)
        membership_update(
            membership=current,
            roles=form.roles_kept(),
            is_active=form.cleaned_data["is_active"],
            actor=Actor.from_request(request),
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Roles were saved by the membership service in save_model."""

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The membership service audits."""


class StaffInvitationForm(forms.ModelForm):
    roles = forms.ModelMultipleChoiceField(
        queryset=Role.objects.exclude(code=RoleCode.PATIENT),
        widget=forms.CheckboxSelectMultiple,
        help_text="What the person may do here once they accept.",
    )

    class Meta:
        model = StaffInvitation
        fields = ["email"]
        help_texts = {
            "email": "The invitation goes to this address; only its holder can accept it."
        }

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "email" in cleaned and "roles" in cleaned:
            try:
                cleaned["email"] = staff_invite_check(
                    tenant=self.tenant,
                    email=cleaned["email"],
                    roles=[role.code for role in cleaned["roles"]],
                    now=timezone.now(),
                )
            except InvitationInvalid as exc:
                raise ValidationError(str(exc)) from exc
        return cleaned


@admin.register(StaffInvitation, site=tenant_admin_site)
class StaffInvitationAdmin(TenantScopedModelAdmin):
    """Members join by invitation; the admin sees the address typed, never the account."""

    form = StaffInvitationForm
    form_takes_tenant = True
    list_display = ["email", "role_list", "state", "invited_by_email", "created_at", "expires_at"]
    search_fields = ["email"]
    ordering = ["-created_at"]
    list_select_related = ["invited_by"]
    actions = ["withdraw"]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).prefetch_related("roles")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["email", "roles"]
        return [
            "email",
            "role_list",
            "state",
            "invited_by_email",
            "created_at",
            "expires_at",
            "sent_at",
            "accepted_at",
            "revoked_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj) if obj is not None else []

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    @admin.display(description="Roles")
    def role_list(self, obj: StaffInvitation) -> str:
        return ", ".join(sorted(role.name for role in obj.roles.all()))

    @admin.display(description="State")
    def state(self, obj: StaffInvitation) -> str:
        state = obj.state_at(timezone.now())
        if state == StaffInvitation.State.PENDING:
            try:
                inviter_still_may(obj)
            except InvitationUnavailable:
                return "Suspended: its sender may no longer invite staff"
        return state.label

    @admin.display(description="Invited by", ordering="invited_by__email")
    def invited_by_email(self, obj: StaffInvitation) -> str:
        return obj.invited_by.email

    def save_model(
        self, request: HttpRequest, obj: StaffInvitation, form: Any, change: bool
    ) -> None:
        try:
            invitation = staff_invite(
                tenant=request.tenant,
                email=form.cleaned_data["email"],
                roles=[role.code for role in form.cleaned_data["roles"]],
                invited_by=request.user,
                actor=Actor.from_request(request),
                now=timezone.now(),
            )
        except InvitationInvalid as exc:  # another admin's invitation went first
            request._staff_invitation_refused = str(exc)  # type: ignore[attr-defined]
            return
        obj.pk, obj.tenant, obj.email = invitation.pk, invitation.tenant, invitation.email
        obj._state.adding = False

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The invitation service saved the roles."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The invitation service audits."""

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None):
        changelist = reverse("tenant_admin:tenants_staffinvitation_changelist")
        refused = getattr(request, "_staff_invitation_refused", None)
        if refused is not None:
            self.message_user(request, refused, level=messages.ERROR)
            return HttpResponseRedirect(changelist)
        # The same words whether or not the address has an account anywhere.
        self.message_user(
            request,
            f"Invitation sent to {obj.email}. It is valid for {STAFF_INVITATION_DAYS} days; "
            "the person becomes a member when they accept it.",
        )
        return HttpResponseRedirect(changelist)

    @admin.action(description="Withdraw the selected invitations")
    def withdraw(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        actor, now = Actor.from_request(request), timezone.now()
        withdrawn = sum(
            staff_invitation_revoke(invitation=invitation, actor=actor, now=now)
            for invitation in queryset.select_related("tenant")
        )
        self.message_user(
            request, f"Withdrew {withdrawn} invitation(s); their links no longer work."
        )


class ClinicPolicyForm(forms.ModelForm):
    patients_require_mfa = forms.BooleanField(
        required=False,
        label="Patients must use a second factor",
        help_text="Staff always must.",
    )

    time_zone = time_zone_form_field()

    class Meta:
        model = Tenant
        fields = list(POLICY_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            self.initial["patients_require_mfa"] = self.instance.mfa_required_roles.filter(
                code=RoleCode.PATIENT
            ).exists()


@admin.register(Tenant, site=tenant_admin_site)
class ClinicPolicyAdmin(TenantScopedModelAdmin):
    form = ClinicPolicyForm
    list_display = ["name", "slug", "session_idle_minutes", "step_up_minutes"]
    readonly_fields = ["slug", "status", "storage_backend", "storage_region"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "status"]}),
        (
            "Sign-in",
            {
                "fields": [
                    "patients_require_mfa",
                    "session_idle_minutes",
                    "session_absolute_hours",
                    "step_up_minutes",
                ]
            },
        ),
        (
            "Sharing",
            {"fields": ["share_link_default_days", "share_link_max_days", "share_link_max_uses"]},
        ),
        ("Local time", {"fields": ["time_zone"]}),
        ("Partners", {"fields": ["cors_allowed_origins"]}),
        ("Data residency (set by the platform)", {"fields": ["storage_backend", "storage_region"]}),
    ]

    def scope(self, queryset: models.QuerySet, request: HttpRequest) -> models.QuerySet:
        return queryset.filter(pk=request.tenant.pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        changes = {field: form.cleaned_data[field] for field in POLICY_FIELDS}
        fresh = Tenant.objects.get(pk=request.tenant.pk)
        mfa = [RoleCode.PATIENT.value] if form.cleaned_data["patients_require_mfa"] else []
        changes["mfa_required_roles"] = mfa
        tenant_update_policy(tenant=fresh, actor=Actor.from_request(request), changes=changes)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The policy service saved the roles."""

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The policy service audits."""


class ApiTokenForm(forms.ModelForm):
    """Offers only the scopes the signed-in member's own roles allow giving a token."""

    scopes = forms.MultipleChoiceField(
        choices=ApiToken.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only what your own roles here allow: a token may do no more than you.",
        error_messages={
            "invalid_choice": "Your roles in this clinic do not allow giving a token %(value)s."
        },
    )
    expires_days = forms.IntegerField(
        label="Expires after (days)",
        min_value=1,
        max_value=ADMIN_TOKEN_MAX_DAYS,
        initial=ADMIN_TOKEN_DEFAULT_DAYS,
        help_text=f"At most {ADMIN_TOKEN_MAX_DAYS} days; make a new token before it expires.",
    )

    class Meta:
        model = ApiToken
        fields = ["name"]

    def __init__(self, *args: Any, tenant: Tenant, creator: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.creator = creator
        if "scopes" in self.fields:
            grantable = api_token_grantable_scopes(tenant=tenant, created_by=creator)
            self.fields["scopes"].choices = [
                (value, label) for value, label in ApiToken.Scope.choices if value in grantable
            ]
            if not grantable:
                self.fields["scopes"].help_text = (
                    "Your roles in this clinic allow giving a token no scope: a member whose "
                    "roles see the studies must create it."
                )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "scopes" in cleaned and "expires_days" in cleaned:
            try:
                cleaned["scopes"] = api_token_check(
                    tenant=self.tenant,
                    scopes=cleaned["scopes"],
                    expires_days=cleaned["expires_days"],
                    created_by=self.creator,
                )
            except ValidationError as exc:
                self.add_error("scopes", exc)
        return cleaned


@admin.register(ApiToken, site=tenant_admin_site)
class ApiTokenAdmin(TenantScopedModelAdmin):
    form = ApiTokenForm
    form_takes_tenant = True
    list_display = [
        "name",
        "prefix",
        "scope_list",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["name", "scopes", "expires_days"]
        return [
            "name",
            "prefix",
            "scope_list",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj) if obj is not None else []

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        creator = request.user

        class CreatorForm(form_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, creator=creator, **kw)

        return CreatorForm

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        # The creator's live membership here, for the scopes it no longer covers.
        live = (
            Membership.objects.for_tenant(request.tenant)
            .filter(is_active=True, user__is_active=True)
            .prefetch_related("roles")
        )
        return (
            super()
            .get_queryset(request)
            .prefetch_related(models.Prefetch("created_by__memberships", live, to_attr="live"))
        )

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiToken) -> str:
        text = ", ".join(obj.scopes)
        if obj.created_by is None:  # an operator's token
            return text
        live = getattr(obj.created_by, "live", [])
        held = live[0].permissions if live else frozenset()
        suspended = scopes_suspended(scopes=obj.scopes, held=held)
        if suspended:
            text += f" (suspended: {', '.join(suspended)}; its creator no longer holds the role)"
        return text

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        try:
            token, plaintext = api_token_create(
                tenant=request.tenant,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_days=form.cleaned_data["expires_days"],
                actor=Actor.from_request(request),
                now=timezone.now(),
                created_by=request.user,
            )
        except ValidationError as exc:  # the member's roles changed since the form was checked
            request._new_token_refused = "; ".join(exc.messages)  # type: ignore[attr-defined]
            return
        obj.pk, obj.tenant, obj.prefix = token.pk, token.tenant, token.prefix
        obj._state.adding = False
        request._new_token_plaintext = plaintext  # type: ignore[attr-defined]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related; the token service saved everything."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        """The token service audits."""

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: Any = None):
        refused = getattr(request, "_new_token_refused", None)
        if refused is not None:
            self.message_user(request, refused, level=messages.ERROR)
            return HttpResponseRedirect(reverse("tenant_admin:tenants_apitoken_changelist"))
        # Shown once, in this response only: never in a message cookie or the session.
        return render(
            request,
            "admin/tenants/apitoken/created.html",
            {
                **self.admin_site.each_context(request),
                "token": obj,
                "plaintext": request._new_token_plaintext,
            },  # type: ignore[attr-defined]
        )

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        for token in queryset:
            api_token_revoke(token=token, actor=Actor.from_request(request), now=timezone.now())
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
