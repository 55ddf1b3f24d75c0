"""Sign-in, second factor, step-up, account security and password flows."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

import audit
from audit.actors import Actor, client_ip
from audit.models import Action, Outcome
from tenants.forms import CodeForm, EnrolForm, InvitationAwarePasswordResetForm
from tenants.mfa import (
    SecondFactorError,
    backup_codes_issue,
    backup_codes_left,
    confirmed_devices,
    has_passkey,
    has_totp,
    mfa_required,
    qr_svg_data_uri,
    second_factor_verify,
    session_mark_verified,
    session_totp_confirm,
    session_totp_pending,
    session_totp_start,
    step_up_is_fresh,
    step_up_redirect,
    totp_secret_base32,
)
from tenants.models import User
from tenants.throttle import (
    ThrottleKey,
    attempt_allowed,
    attempt_succeeded,
    attempt_uncounted,
    known_device,
    known_device_remember,
)

LOCKED_MESSAGE = "Too many attempts. Wait 15 minutes and try again, or ask your administrator."


def safe_next(request: HttpRequest, default: str = "") -> str:
    """The `next` parameter when it points at this site, else `default` (or home).

    Never the sign-in page itself: a signed-in visitor is sent on from there to its
    `next`, and Django refuses a page that sends a visitor back to itself (a 500).
    """
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if (
        candidate
        and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
        and urlsplit(candidate).path != reverse("login")
    ):
        return candidate
    return default or reverse("home")


class SignInView(auth_views.LoginView):
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        account = request.POST.get("username", "")
        throttle = ThrottleKey(
            kind="signin",
            account=account,
            ip=client_ip(request),
            device=known_device(request, account=account),
        )
        if not attempt_allowed(throttle):
            audit.record(
                actor=Actor.for_user(None, ip=client_ip(request)),
                action=Action.SIGNIN_LOCKED,
                target=None,
                tenant=None,
                outcome=Outcome.DENIED,
                detail={},
            )
            # Unbound: a bound form's errors would check the password all the same.
            form = self.get_form_class()(request)
            form.cleaned_data = {}
            form.add_error(None, LOCKED_MESSAGE)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        self._throttle = throttle
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        attempt_succeeded(self._throttle)
        super().form_valid(form)  # logs in and cycles the session key
        user = form.get_user()
        next_url = safe_next(self.request)
        if confirmed_devices(user):
            response = _redirect_with_next("mfa_verify", next_url)
        elif mfa_required(user):
            response = _redirect_with_next("mfa_enrol", next_url)
        else:
            response = HttpResponseRedirect(next_url)
        known_device_remember(self.request, response, account=self._throttle.account)
        return response

    def get_success_url(self) -> str:
        return safe_next(self.request)


def _redirect_with_next(name: str, next_url: str) -> HttpResponse:
    return HttpResponseRedirect(f"{reverse(name)}?{urlencode({'next': next_url})}")


@login_required
@require_http_methods(["GET", "POST"])
def mfa_verify(request: HttpRequest) -> HttpResponse:
    """Second step of sign-in: a TOTP or backup code."""
    user: User = request.user  # type: ignore[assignment]
    if user.is_verified():
        return HttpResponseRedirect(safe_next(request))
    if not confirmed_devices(user):
        return _redirect_with_next("mfa_enrol", safe_next(request))
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            device = second_factor_verify(
                user=user, token=form.cleaned_data["code"], actor=Actor.from_request(request)
            )
        except SecondFactorError as exc:
            form.add_error("code", str(exc))
        else:
            session_mark_verified(request, device)
            return HttpResponseRedirect(safe_next(request))
    return render(
        request,
        "accounts/verify.html",
        {"form": form, "next": safe_next(request), "step_up": False},
    )


@login_required
@require_http_methods(["GET", "POST"])
def mfa_enrol(request: HttpRequest) -> HttpResponse:
    """Set up an authenticator app; shows the backup codes once on success."""
    user: User = request.user  # type: ignore[assignment]
    if confirmed_devices(user):
        if not user.is_verified():
            return _redirect_with_next("mfa_verify", safe_next(request))
        if not step_up_is_fresh(request):
            # Adding a factor (and new backup codes) is as sensitive as a role change.
            return step_up_redirect(request)
    if request.method == "POST":
        form = EnrolForm(request.POST)
        if form.is_valid():
            try:
                codes = session_totp_confirm(
                    request,
                    user=user,
                    shown_device_id=form.cleaned_data["device_id"],
                    token=form.cleaned_data["code"],
                    actor=Actor.from_request(request),
                )
            except SecondFactorError as exc:
                form.add_error("code", str(exc))
            else:
                return render(
                    request,
                    "accounts/backup_codes.html",
                    {"codes": codes, "next": safe_next(request)},
                )
        # A wrong code keeps the secret on screen; one replaced by another session's
        # start (or never started) gives way to a fresh one.
        device = session_totp_pending(request, user=user) or session_totp_start(request, user=user)
        if form.data.get("device_id") != str(device.pk):
            # The page shows another secret than the one submitted: the next try is for it.
            form.data = form.data.copy()
            form.data["device_id"] = str(device.pk)
    else:
        device = session_totp_start(request, user=user)
        form = EnrolForm(initial={"device_id": device.pk})
    return render(
        request,
        "accounts/enrol.html",
        {
            "form": form,
            "secret": totp_secret_base32(device),
            "qr": qr_svg_data_uri(device.config_url),
            "next": safe_next(request),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def step_up(request: HttpRequest) -> HttpResponse:
    """Re-verify the second factor before a sensitive action."""
    user: User = request.user  # type: ignore[assignment]
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            device = second_factor_verify(
                user=user,
                token=form.cleaned_data["code"],
                actor=Actor.from_request(request),
                step_up=True,
            )
        except SecondFactorError as exc:
            form.add_error("code", str(exc))
        else:
            session_mark_verified(request, device)
            return HttpResponseRedirect(safe_next(request))
    return render(
        request, "accounts/verify.html", {"form": form, "next": safe_next(request), "step_up": True}
    )


@login_required
def account_security(request: HttpRequest) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    return render(
        request,
        "accounts/security.html",
        {
            "has_totp": has_totp(user),
            "has_passkey": has_passkey(user),
            "backup_codes_left": backup_codes_left(user),
        },
    )


@login_required
@require_http_methods(["POST"])
def backup_codes_regenerate(request: HttpRequest) -> HttpResponse:
    if not step_up_is_fresh(request):
        # A POST is not replayed after the step-up: back to the page with the button.
        messages.info(request, "Confirm your second factor, then ask for new codes again.")
        return step_up_redirect(request, then=reverse("account_security"))
    codes = backup_codes_issue(user=request.user, actor=Actor.from_request(request))
    return render(
        request, "accounts/backup_codes.html", {"codes": codes, "next": reverse("account_security")}
    )


class PasswordChangeView(auth_views.PasswordChangeView):
    """Wrong current passwords count against the account's sign-in lockout: a session
    left open must not be a way to guess its password without limit."""

    success_url = reverse_lazy("account_security")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        self._throttle = ThrottleKey(
            kind="signin", account=request.user.email, ip=client_ip(request)
        )
        if not attempt_allowed(self._throttle):
            audit.record_for_user(
                user=request.user,
                actor=Actor.from_request(request),
                action=Action.SIGNIN_LOCKED,
                outcome=Outcome.DENIED,
                detail={"page": "password_change"},
            )
            form = self.get_form_class()(user=request.user)  # unbound: nothing is checked
            form.cleaned_data = {}
            form.add_error(None, LOCKED_MESSAGE)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        if "old_password" not in form.errors:
            attempt_uncounted(self._throttle)  # the password was right: not a guess
        return super().form_invalid(form)

    @transaction.atomic
    def form_valid(self, form: Any) -> HttpResponse:
        attempt_succeeded(self._throttle)
        response = super().form_valid(form)
        audit.record_for_user(
            user=self.request.user,
            actor=Actor.from_request(self.request),
            action=Action.PASSWORD_CHANGED,
        )
        messages.success(self.request, "Your password was changed.")
        return response


class PasswordResetView(auth_views.PasswordResetView):
    success_url = reverse_lazy("password_reset_done")
    form_class = InvitationAwarePasswordResetForm

    def form_valid(self, form: Any) -> HttpResponse:
        from tenants.throttle import password_reset_allowed

        email = form.cleaned_data["email"]
        ip = client_ip(self.request)
        user = User.objects.filter(email__iexact=email, is_active=True).first()
        allowed = password_reset_allowed(account=email, ip=ip)
        audit.record_for_user(
            user=user,
            actor=Actor.for_user(None, ip=ip),
            action=Action.PASSWORD_RESET_REQUESTED,
            detail={"known_account": user is not None, **({} if allowed else {"throttled": True})},
        )
        if not allowed:  # the same answer: whether a mail went says nothing either
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    success_url = reverse_lazy("password_reset_complete")

    @transaction.atomic
    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        user = form.user
        audit.record_for_user(
            user=user,
            actor=Actor.for_user(None, ip=client_ip(self.request)),
            action=Action.PASSWORD_RESET_COMPLETED,
        )
        from tenants.throttle import throttle_reset

        # The sign-in lockout only: a reset proves the mailbox, not the second factor.
        throttle_reset(account=user.email, kinds=("signin",))
        return response
