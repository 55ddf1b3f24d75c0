"""The study page and its actions: download, break-glass, grants, confidentiality, and
confirming the patient of a study held for differing patient details."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

import audit
from audit.actors import Actor
from audit.models import Action
from audit.selectors import actor_labels, events_about_study
from imaging.archive import study_zip, zip_response
from imaging.forms import BreakGlassForm, GrantForm
from imaging.models import Study
from imaging.selectors import (
    STUDY_DOWNLOAD_PERM,
    STUDY_VIEW_PERM,
    StudyAccess,
    instances_for_download,
    series_for_study,
    study_access,
    study_get,
    study_target,
)
from imaging.services import (
    PatientDetailsChanged,
    study_grant,
    study_grant_revoke,
    study_patient_confirm,
    study_set_confidential,
)
from tenants.access import check_clinic_perm, has_clinic_perm
from tenants.breakglass import break_glass_open
from tenants.grants import object_granted, object_grantees
from tenants.mfa import require_step_up, step_up_is_fresh, step_up_redirect
from tenants.models import BreakGlassGrant, User
from tenants.roles import Perm, RoleCode
from tenants.selectors import members_with_role

HISTORY_SIZE = 50


def study_for_request(request: HttpRequest, study_id: uuid.UUID) -> tuple[Study, StudyAccess]:
    """The study, if the member may know it exists; another clinic's is a plain 404."""
    if getattr(request, "membership", None) is None:
        raise Http404("No such study")
    study = study_get(tenant=request.tenant, study_id=study_id)
    if study is None:
        raise Http404("No such study")
    access = study_access(membership=request.membership, study=study, now=timezone.now())
    if not access.visible:
        raise Http404("No such study")
    return study, access


def study_url(study: Study) -> str:
    return reverse("study", kwargs={"tenant_slug": study.tenant.slug, "study_id": study.pk})


def _candidates(request: HttpRequest) -> list[tuple[str, str]]:
    """Referring physicians a member may grant a study to: never themselves."""
    members = members_with_role(tenant=request.tenant, role=RoleCode.REFERRING_PHYSICIAN)
    return [(str(m.user_id), m.user.email) for m in members if m.user_id != request.user.pk]


def _grants(request: HttpRequest, study: Study) -> dict:
    tenant = request.tenant
    granted = object_grantees(tenant=tenant, perm=STUDY_VIEW_PERM, obj=study)
    rows = [
        {
            "user": user,
            "download": object_granted(
                tenant=tenant, user=user, perm=STUDY_DOWNLOAD_PERM, obj=study
            ),
        }
        for user in granted
    ]
    candidates = _candidates(request)
    return {
        "rows": rows,
        "form": GrantForm(grantees=candidates) if candidates else None,
        "step_up_fresh": step_up_is_fresh(request),
    }


@require_http_methods(["GET"])
def study_detail(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study, access = study_for_request(request, study_id)
    series = list(series_for_study(study=study)) if access.details else []
    context: dict = {"study": study, "access": access, "series": series}
    if access.details:
        if has_clinic_perm(request, Perm.STUDY_GRANT) and not access.glass_only:
            context["grants"] = _grants(request, study)
        audit.record(
            actor=Actor.from_request(request),
            action=Action.STUDY_VIEWED,
            target=study,
            tenant=request.tenant,
            detail={"via": "break_glass" if access.break_glass else "access"},
        )
    if has_clinic_perm(request, Perm.AUDIT_READ):
        # Every series' events, also where the details stay masked: thumbnails and
        # partners' series retrieves name the series only. Ids, not PHI.
        series_ids = [str(pk) for pk in series_for_study(study=study).values_list("pk", flat=True)]
        events = list(
            events_about_study(
                tenant=request.tenant, study_id=str(study.pk), series_ids=series_ids
            )[:HISTORY_SIZE]
        )
        with transaction.atomic():
            audit.record(  # reading the log is audited, here as on the log's own page
                actor=Actor.from_request(request),
                action=Action.AUDIT_VIEWED,
                target=None,
                tenant=request.tenant,
                detail={"page": "study_history", "filters": {"study": str(study.pk)}},
            )
        labels = actor_labels(tenant=request.tenant, events=events)
        context["show_history"] = True
        context["history"] = [
            {
                "event": e,
                "actor": labels.get((e.actor_type, e.actor_id), e.get_actor_type_display()),
            }
            for e in events
        ]
    return render(request, "imaging/study.html", context)


@require_http_methods(["GET"])
def study_download(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study, access = study_for_request(request, study_id)
    if not access.download:
        raise PermissionDenied("You may not download this study.")
    return _download(request, study, access)


@require_step_up
def _download(request: HttpRequest, study: Study, access: StudyAccess) -> HttpResponse:
    return study_download_response(
        request, study, back_url=study_url(study), break_glass=access.break_glass
    )


def study_download_response(
    request: HttpRequest,
    study: Study,
    *,
    back_url: str,
    via: str = "",
    break_glass: BreakGlassGrant | None = None,
) -> HttpResponse:
    """The whole study as a zip for a signed-in member, audited; staff and patients alike.

    A download under break-glass names the grant, so the privacy officers reviewing it
    see every copy taken under it.
    """
    instances = instances_for_download(study=study)
    if not instances:
        messages.error(request, "This study has no images to download yet.")
        return HttpResponseRedirect(back_url)
    actor = Actor.from_request(request)
    archive = study_zip(study=study, instances=instances, actor=actor)
    detail: dict = {"instances": len(instances), "bytes": len(archive)}
    if via:
        detail["via"] = via
    if break_glass is not None:
        detail["break_glass"] = str(break_glass.pk)
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.STUDY_DOWNLOADED,
            target=study,
            tenant=request.tenant,
            detail=detail,
        )
    return zip_response(archive, study=study)


@require_http_methods(["GET", "POST"])
def study_break_glass(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study, access = study_for_request(request, study_id)
    if access.details:
        return HttpResponseRedirect(study_url(study))
    if not access.may_break_glass:
        raise PermissionDenied("Your role does not allow break-glass access.")
    if not step_up_is_fresh(request):
        # The most sensitive access there is: an unattended or stolen session must not open it.
        messages.info(request, "Confirm your second factor before breaking the glass.")
        return step_up_redirect(request)
    form = BreakGlassForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            break_glass_open(
                membership=request.membership,
                target=study_target(study),
                reason=form.cleaned_data["reason"],
                actor=Actor.from_request(request),
                now=timezone.now(),
            )
        except ValidationError as exc:
            form.add_error("reason", exc.messages[0])
        else:
            messages.warning(
                request,
                "Break-glass access opened. It is time-limited and the privacy officers "
                "have been notified.",
            )
            return HttpResponseRedirect(study_url(study))
    status = 400 if request.method == "POST" else 200
    return render(
        request, "imaging/break_glass.html", {"study": study, "form": form}, status=status
    )


GLASS_ONLY_REFUSAL = (
    "Break-glass access lets you read this study, not change who may read it. Ask a "
    "colleague with a grant on it, or the privacy officers."
)


def _study_to_change(request: HttpRequest, study_id: uuid.UUID, *, perm: Perm) -> Study:
    """The study whose access the member changes (grants, the confidential mark, its
    release to the patient portal)."""
    check_clinic_perm(request, perm)
    study, access = study_for_request(request, study_id)
    if not access.details:
        raise PermissionDenied("Open the study first.")
    if access.glass_only:
        raise PermissionDenied(GLASS_ONLY_REFUSAL)
    return study


def _referring_physician(request: HttpRequest, user_id: str) -> User | None:
    """A referring physician of the clinic other than the member granting."""
    members = members_with_role(tenant=request.tenant, role=RoleCode.REFERRING_PHYSICIAN)
    return next(
        (m.user for m in members if str(m.user_id) == user_id and m.user_id != request.user.pk),
        None,
    )


def _step_up_first(
    request: HttpRequest, study: Study, *, anchor: str = "#access"
) -> HttpResponse | None:
    """Changing who may read a study needs a fresh second factor; a POST cannot be
    replayed, so come back to the study page."""
    if step_up_is_fresh(request):
        return None
    messages.info(request, "Confirm your second factor, then repeat the change.")
    query = urlencode({"next": study_url(study) + anchor})
    return HttpResponseRedirect(f"{reverse('step_up')}?{query}")


@require_POST
def study_grant_add(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study = _study_to_change(request, study_id, perm=Perm.STUDY_GRANT)
    if (step_up := _step_up_first(request, study)) is not None:
        return step_up
    form = GrantForm(request.POST, grantees=_candidates(request))
    if not form.is_valid():
        messages.error(request, "Choose a referring physician of this clinic and an access level.")
        return HttpResponseRedirect(study_url(study) + "#access")
    grantee = _referring_physician(request, form.cleaned_data["grantee"])
    if grantee is None:
        messages.error(request, "Choose a referring physician of this clinic.")
        return HttpResponseRedirect(study_url(study) + "#access")
    study_grant(
        study=study,
        grantee=grantee,
        download=form.cleaned_data["level"] == "download",
        actor=Actor.from_request(request),
    )
    messages.success(request, f"{grantee.email} can now open this study.")
    return HttpResponseRedirect(study_url(study) + "#access")


@require_POST
def study_grant_remove(
    request: HttpRequest, study_id: uuid.UUID, user_id: uuid.UUID
) -> HttpResponse:
    study = _study_to_change(request, study_id, perm=Perm.STUDY_GRANT)
    if (step_up := _step_up_first(request, study)) is not None:
        return step_up
    grantee = next(
        (
            u
            for u in object_grantees(tenant=request.tenant, perm=STUDY_VIEW_PERM, obj=study)
            if u.pk == user_id
        ),
        None,
    )
    if grantee is None:
        raise Http404("No such grant")
    withdrawn = study_grant_revoke(
        study=study, grantee=grantee, actor=Actor.from_request(request), now=timezone.now()
    )
    if withdrawn.still_opens:
        message = (
            f"{grantee.email} no longer has a grant on this study; "
            "their role or break-glass access still opens it."
        )
    else:
        message = f"{grantee.email} can no longer open this study."
    if revoked := withdrawn.revoked:
        message += (
            f" {revoked} live share link{pluralize(revoked)} they made of it "
            f"{pluralize(revoked, 'was,were')} revoked."
        )
    if shortened := withdrawn.shortened:
        message += (
            f" {shortened} live share link{pluralize(shortened)} they made of it "
            f"now end{pluralize(shortened, 's,')} when their break-glass access does."
        )
    messages.success(request, message)
    return HttpResponseRedirect(study_url(study) + "#access")


@require_POST
def study_confidential(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study = _study_to_change(request, study_id, perm=Perm.STUDY_MARK_CONFIDENTIAL)
    if (step_up := _step_up_first(request, study, anchor="")) is not None:
        return step_up
    choice = request.POST.get("confidential")
    if choice not in ("1", "0"):
        # Anything else used to read as "not confidential": a bad form removed the mark.
        return HttpResponseBadRequest(
            "Choose whether the study is confidential (1) or not (0); nothing was changed.",
            content_type="text/plain; charset=utf-8",
        )
    confidential = choice == "1"
    revoked = study_set_confidential(
        study=study,
        confidential=confidential,
        by=request.user,
        actor=Actor.from_request(request),
        now=timezone.now(),
    )
    messages.success(
        request,
        "The study is now confidential: other staff see it masked until they break the glass."
        if confidential
        else "The study is no longer confidential.",
    )
    if revoked:
        messages.warning(
            request,
            f"{revoked} live share link{pluralize(revoked)} to this study "
            f"{pluralize(revoked, 'was,were')} revoked: their recipients' next request is "
            "refused.",
        )
    return HttpResponseRedirect(study_url(study))


@require_POST
def study_patient_confirmed(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study = _study_to_change(request, study_id, perm=Perm.STUDY_CONFIRM_PATIENT)
    if (step_up := _step_up_first(request, study, anchor="")) is not None:
        return step_up
    try:
        seen = int(request.POST.get("seen", ""))
    except ValueError:
        return HttpResponseBadRequest(
            "The form did not say what it showed; nothing was changed.",
            content_type="text/plain; charset=utf-8",
        )
    try:
        confirmed = study_patient_confirm(study=study, actor=Actor.from_request(request), seen=seen)
    except PatientDetailsChanged:
        messages.warning(
            request,
            "Images with other patient details arrived since this page was shown; nothing "
            "was confirmed. Check them in the viewer, then confirm again.",
        )
        return HttpResponseRedirect(study_url(study))
    if confirmed:
        messages.success(
            request,
            "Confirmed as this patient's study: the patient portal shows it to the patient.",
        )
    else:
        messages.info(request, "This study was not held; nothing was changed.")
    return HttpResponseRedirect(study_url(study))
