"""The invitee's side of a staff invitation, under /accounts/invitation/.

As with share links and patient invitations, the token in the emailed URL is swapped for
a session on first visit and the browser is sent to a token-free URL. The invitee then
signs in (or creates an account) as the invited address and accepts; only then does the
clinic see the account.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from audit.actors import Actor, client_ip
from tenants.access import landing_url
from tenants.forms import NewStaffAccountForm
from tenants.invitations import (
    InvitationInvalid,
    InvitationUnavailable,
    invitation_account,
    staff_invitation_accept,
    staff_invitation_accept_new_account,
    staff_invitation_actor,
    staff_invitation_current,
    staff_invitation_lookup,
    staff_invitation_roles,
)
from tenants.models import Membership, StaffInvitation
from tenants.throttle import too_many_lookups

SESSION_KEY = "staff_invitation"

UNAVAILABLE_TEXT = {
    "expired": "This invitation has expired. Ask the clinic's administrator for a new one.",
    "accepted": "This invitation has already been accepted. Sign in to reach the clinic.",
    "used": "This invitation has already been accepted. Sign in to reach the clinic.",
    "suspended": "This invitation cannot be used now: the administrator who sent it may "
    "no longer invite staff. Ask the clinic's administrators for a new one.",
}


def _unavailable(request: HttpRequest, exc: InvitationUnavailable) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    text = UNAVAILABLE_TEXT.get(exc.reason, "This invitation link does not work.")
    return render(
        request, "accounts/invitation_unavailable.html", {"text": text}, status=exc.status
    )


@never_cache
@require_http_methods(["GET"])
def staff_invitation_open(request: HttpRequest, token: str) -> HttpResponse:
    """Swap the token in the URL for the session, then drop it from the URL."""
    if too_many_lookups(request):
        response = render(request, "sharing/slow_down.html", status=429)
        response["Retry-After"] = "60"
    else:
        try:
            invitation = staff_invitation_lookup(
                raw=token, now=timezone.now(), ip=client_ip(request)
            )
        except InvitationUnavailable as exc:
            response = _unavailable(request, exc)
        else:
            request.session.cycle_key()
            request.session[SESSION_KEY] = str(invitation.pk)
            response = HttpResponseRedirect(reverse("staff_invitation_home"), status=303)
    response["Referrer-Policy"] = "no-referrer"
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def staff_invitation_home(request: HttpRequest) -> HttpResponse:
    invitation_id = request.session.get(SESSION_KEY)
    if not invitation_id:
        return _unavailable(request, InvitationUnavailable(status=404, reason="unknown"))
    try:
        invitation = staff_invitation_current(
            invitation_id=invitation_id, now=timezone.now(), ip=client_ip(request)
        )
    except InvitationUnavailable as exc:
        return _unavailable(request, exc)
    context = {"invitation": invitation, "roles": staff_invitation_roles(invitation)}
    if request.user.is_authenticated:
        return _accept_step(request, invitation, context)
    if invitation_account(invitation) is not None:
        login_url = f"{reverse('login')}?next={reverse('staff_invitation_home')}"
        return render(
            request, "accounts/invitation_sign_in.html", {**context, "login_url": login_url}
        )
    return _new_account_step(request, invitation, context)


def _joined(request: HttpRequest, membership: Membership) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    messages.success(request, f"You are now a member of {membership.tenant.name}.")
    return HttpResponseRedirect(landing_url(membership))


def _accept_step(request: HttpRequest, invitation: StaffInvitation, context: dict) -> HttpResponse:
    if not request.user.is_verified():  # type: ignore[union-attr]
        # Staff roles need a second factor; a patient signed in with a password alone
        # sets one up first (the middleware already sent anyone who has one to verify).
        query = urlencode({"next": reverse("staff_invitation_home")})
        return HttpResponseRedirect(f"{reverse('mfa_enrol')}?{query}")
    error = None
    if request.user.email.lower() != invitation.email.lower():  # type: ignore[union-attr]
        error = (
            "This invitation was sent to another email address than the one you are signed "
            "in with. Sign out, then open the link from the email again."
        )
    elif request.method == "POST":
        try:
            membership = staff_invitation_accept(
                invitation=invitation,
                user=request.user,  # type: ignore[arg-type]
                actor=Actor.from_request(request),
                now=timezone.now(),
            )
        except InvitationUnavailable as exc:
            return _unavailable(request, exc)
        except InvitationInvalid as exc:
            error = str(exc)
        else:
            return _joined(request, membership)
    return render(
        request,
        "accounts/invitation_accept.html",
        {**context, "error": error},
        status=400 if error and request.method == "POST" else 200,
    )


def _new_account_step(
    request: HttpRequest, invitation: StaffInvitation, context: dict
) -> HttpResponse:
    form = NewStaffAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = staff_invitation_accept_new_account(
                invitation=invitation,
                password=form.cleaned_data["password"],
                full_name=form.cleaned_data["full_name"],
                actor=staff_invitation_actor(invitation, ip=client_ip(request)),
                now=timezone.now(),
            )
        except ValidationError as exc:
            form.add_error("password", exc.messages)
        except InvitationInvalid as exc:
            form.add_error(None, str(exc))
        except InvitationUnavailable as exc:
            return _unavailable(request, exc)
        else:
            login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            return _joined(request, membership)
    return render(
        request,
        "accounts/invitation_account.html",
        {**context, "form": form},
        status=400 if request.method == "POST" else 200,
    )
