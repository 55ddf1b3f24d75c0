"""Patient portal invitations: front desk's page for a patient, and the invitee's pages.

The invitee's side mirrors a share link's: the token in the emailed URL is swapped for
a session on first visit and the browser is sent to a token-free URL; the date of
birth is asked before anything else; only then is an account created or linked.
"""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

import audit
from audit.actors import Actor, client_ip
from audit.models import Action
from imaging.models import Patient
from imaging.selectors import patient_get, patient_records_alike
from sharing.forms import BirthDateForm, NewPatientAccountForm, PatientInviteForm
from sharing.invitations import (
    InvitationInvalid,
    InvitationUnavailable,
    invitation_accept,
    invitation_accept_new_account,
    invitation_actor,
    invitation_check_birth_date,
    invitation_current,
    invitation_lookup,
    invitation_needs_birth_date,
    invitation_revoke,
    patient_invite,
    patient_link_revoke,
)
from sharing.models import PatientInvitation
from sharing.selectors import invitation_get, patient_link_get, patient_portal_access
from tenants.access import require_perm
from tenants.invitations import invitation_account
from tenants.mfa import require_step_up
from tenants.roles import Perm
from tenants.throttle import too_many_lookups

SESSION_KEY = "portal_invitation"

# --- Front desk -----------------------------------------------------------------------


def _patient(request: HttpRequest, patient_id: uuid.UUID) -> Patient:
    patient = patient_get(tenant=request.tenant, patient_id=patient_id)  # type: ignore[attr-defined]
    if patient is None:
        raise Http404("No such patient")
    return patient


def patient_portal_url(patient: Patient) -> str:
    return reverse(
        "patient_portal", kwargs={"tenant_slug": patient.tenant.slug, "patient_id": patient.pk}
    )


def _record_label(patient: Patient) -> str:
    born = f"born {patient.birth_date.isoformat()}" if patient.birth_date else "birth date unknown"
    issuer = f" ({patient.issuer})" if patient.issuer else ""
    return f"ID {patient.patient_id}{issuer} · {born}"


@require_perm(Perm.PATIENT_INVITE)
@require_http_methods(["GET", "POST"])
def patient_portal(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """A patient's portal access: linked accounts, invitations, and a form to invite."""
    patient = _patient(request, patient_id)
    if request.method == "POST":
        return _invite(request, patient)
    return _portal_page(request, patient, form=None)


def _portal_page(
    request: HttpRequest, patient: Patient, *, form: PatientInviteForm | None, status: int = 200
) -> HttpResponse:
    records = patient_records_alike(patient=patient)
    if form is None:
        form = PatientInviteForm(
            records=[(str(p.pk), _record_label(p)) for p in records],
            initial={"patients": [str(patient.pk)]},
        )
    invitations, links = patient_portal_access(tenant=request.tenant, patient=patient)  # type: ignore[attr-defined]
    now = timezone.now()
    audit.record(
        actor=Actor.from_request(request),
        action=Action.PATIENT_VIEWED,
        target=patient,
        tenant=request.tenant,  # type: ignore[attr-defined]
        # The page lists the clinic's other records of the same name and birth date (their
        # IDs and dates of birth), to invite for them too: those were shown as well.
        detail={
            "via": "patient_portal_access",
            "records": [str(p.pk) for p in records if p.pk != patient.pk],
        },
    )
    return render(
        request,
        "sharing/patient_portal.html",
        {
            "patient": patient,
            "form": form,
            "invitations": [{"invitation": i, "state": i.state_at(now)} for i in invitations],
            "links": links,
        },
        status=status,
    )


@require_step_up
def _invite(request: HttpRequest, patient: Patient) -> HttpResponse:
    records = patient_records_alike(patient=patient)
    form = PatientInviteForm(request.POST, records=[(str(p.pk), _record_label(p)) for p in records])
    if form.is_valid():
        chosen = [p for p in records if str(p.pk) in form.cleaned_data["patients"]]
        try:
            patient_invite(
                tenant=request.tenant,  # type: ignore[attr-defined]
                patients=chosen,
                email=form.cleaned_data["email"],
                invited_by=request.user,  # type: ignore[arg-type]
                actor=Actor.from_request(request),
                now=timezone.now(),
            )
        except InvitationInvalid as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Invitation sent. It is valid for 14 days.")
            return HttpResponseRedirect(patient_portal_url(patient))
    return _portal_page(request, patient, form=form, status=400)


@require_perm(Perm.PATIENT_INVITE)
@require_POST
def patient_invitation_revoke(
    request: HttpRequest, patient_id: uuid.UUID, invitation_id: uuid.UUID
) -> HttpResponse:
    patient = _patient(request, patient_id)
    invitation = invitation_get(tenant=request.tenant, invitation_id=invitation_id)  # type: ignore[attr-defined]
    if invitation is None or not invitation.patients.filter(pk=patient.pk).exists():
        raise Http404("No such invitation")
    invitation_revoke(invitation=invitation, actor=Actor.from_request(request), now=timezone.now())
    messages.success(request, "The invitation is withdrawn; its link no longer works.")
    return HttpResponseRedirect(patient_portal_url(patient))


@require_perm(Perm.PATIENT_INVITE)
@require_POST
def patient_link_revoke_view(
    request: HttpRequest, patient_id: uuid.UUID, link_id: uuid.UUID
) -> HttpResponse:
    patient = _patient(request, patient_id)
    link = patient_link_get(tenant=request.tenant, link_id=link_id)  # type: ignore[attr-defined]
    if link is None or link.patient_id != patient.pk:
        raise Http404("No such portal access")
    patient_link_revoke(link=link, actor=Actor.from_request(request), now=timezone.now())
    messages.success(request, "Portal access to this record has ended.")
    return HttpResponseRedirect(patient_portal_url(patient))


# --- The invitee ----------------------------------------------------------------------


def _unavailable(request: HttpRequest, exc: InvitationUnavailable) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    messages_by_reason = {
        "expired": "This invitation has expired. Ask the clinic to send a new one.",
        "accepted": "This invitation has already been used. Sign in to see your images.",
        "used": "This invitation has already been used. Sign in to see your images.",
        "locked": "This invitation is locked after too many wrong dates of birth. "
        "Ask the clinic to send a new one.",
        "suspended": "This invitation cannot be used now: the person who sent it may no "
        "longer send invitations for the clinic. Ask the clinic to send a new one.",
    }
    text = messages_by_reason.get(exc.reason, "This invitation link does not work.")
    return render(
        request,
        "sharing/invitation_unavailable.html",
        {"text": text},
        status=exc.status,
    )


@never_cache
@require_http_methods(["GET"])
def invitation_open(request: HttpRequest, token: str) -> HttpResponse:
    """Swap the token in the URL for the session, then drop it from the URL."""
    if too_many_lookups(request):
        response = render(request, "sharing/slow_down.html", status=429)
        response["Retry-After"] = "60"
    else:
        try:
            invitation = invitation_lookup(raw=token, now=timezone.now(), ip=client_ip(request))
        except InvitationUnavailable as exc:
            response = _unavailable(request, exc)
        else:
            request.session.cycle_key()
            request.session[SESSION_KEY] = {"id": str(invitation.pk), "birth_date_ok": False}
            response = HttpResponseRedirect(reverse("invitation_home"), status=303)
    response["Referrer-Policy"] = "no-referrer"
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_home(request: HttpRequest) -> HttpResponse:
    data = request.session.get(SESSION_KEY)
    if not data:
        return _unavailable(request, InvitationUnavailable(status=404, reason="unknown"))
    now = timezone.now()
    try:
        invitation = invitation_current(invitation_id=data["id"], now=now, ip=client_ip(request))
    except InvitationUnavailable as exc:
        return _unavailable(request, exc)
    if not data.get("birth_date_ok") and invitation_needs_birth_date(invitation):
        return _birth_date_step(request, invitation, data)
    if request.user.is_authenticated:
        return _accept_step(request, invitation)
    if invitation_account(invitation) is not None:
        return render(
            request,
            "sharing/invitation_sign_in.html",
            {
                "invitation": invitation,
                "login_url": f"{reverse('login')}?next={reverse('invitation_home')}",
            },
        )
    return _new_account_step(request, invitation)


def _birth_date_step(
    request: HttpRequest, invitation: PatientInvitation, data: dict
) -> HttpResponse:
    form = BirthDateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if invitation_check_birth_date(
            invitation=invitation,
            answer=form.cleaned_data["birth_date"],
            now=timezone.now(),
            ip=client_ip(request),
        ):
            request.session.cycle_key()
            request.session[SESSION_KEY] = {**data, "birth_date_ok": True}
            return HttpResponseRedirect(reverse("invitation_home"), status=303)
        try:
            invitation_current(
                invitation_id=str(invitation.pk), now=timezone.now(), ip=client_ip(request)
            )
        except InvitationUnavailable as exc:
            return _unavailable(request, exc)
        form.add_error("birth_date", "That does not match the clinic's records. Try again.")
    return render(
        request,
        "sharing/invitation_birth_date.html",
        {"invitation": invitation, "form": form},
        status=400 if request.method == "POST" else 200,
    )


def _accepted(request: HttpRequest, invitation: PatientInvitation) -> HttpResponse:
    request.session.pop(SESSION_KEY, None)
    messages.success(request, f"Your images at {invitation.tenant.name} are now in your portal.")
    slug = invitation.tenant.slug
    return HttpResponseRedirect(reverse("my_studies", kwargs={"tenant_slug": slug}))


def _accept_step(request: HttpRequest, invitation: PatientInvitation) -> HttpResponse:
    if request.method == "POST":
        try:
            invitation_accept(
                invitation=invitation,
                user=request.user,  # type: ignore[arg-type]
                actor=Actor.from_request(request),
                now=timezone.now(),
            )
        except InvitationUnavailable as exc:
            return _unavailable(request, exc)
        except InvitationInvalid as exc:
            return render(
                request,
                "sharing/invitation_accept.html",
                {"invitation": invitation, "error": str(exc)},
                status=400,
            )
        return _accepted(request, invitation)
    return render(request, "sharing/invitation_accept.html", {"invitation": invitation})


def _new_account_step(request: HttpRequest, invitation: PatientInvitation) -> HttpResponse:
    form = NewPatientAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = invitation_accept_new_account(
                invitation=invitation,
                password=form.cleaned_data["password"],
                full_name=form.cleaned_data["full_name"],
                actor=invitation_actor(invitation, ip=client_ip(request)),
                now=timezone.now(),
            )
        except ValidationError as exc:
            form.add_error("password", exc.messages)
        except InvitationInvalid as exc:
            form.add_error(None, str(exc))
        except InvitationUnavailable as exc:
            return _unavailable(request, exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return _accepted(request, invitation)
    return render(
        request,
        "sharing/invitation_account.html",
        {"invitation": invitation, "form": form},
        status=400 if request.method == "POST" else 200,
    )
