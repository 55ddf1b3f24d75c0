"""The patient portal: a patient's own studies from every clinic that linked them.

A patient sees, views, downloads and shares only studies of the Patient records their
account is linked to (`sharing.selectors.own_studies`); any other study, of the same
clinic or another, is the same 404 as a missing one. Every read is audited.
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.archive import study_zip, zip_response
from imaging.models import Study
from imaging.selectors import instances_for_download, series_for_study
from imaging.viewing import viewer_session_open
from imaging.views.viewer import viewer_context
from sharing.forms import PatientShareForm
from sharing.selectors import (
    own_studies_everywhere,
    own_study_get,
    share_list,
    study_access_history,
)
from sharing.services import ShareInvalid, share_create
from tenants.access import require_perm
from tenants.mfa import require_step_up_if_enrolled
from tenants.roles import Perm


def my_study_url(study: Study) -> str:
    return reverse("my_study", kwargs={"tenant_slug": study.tenant.slug, "study_id": study.pk})


def _own_study(request: HttpRequest, study_id: uuid.UUID) -> Study:
    study = own_study_get(membership=request.membership, study_id=study_id)  # type: ignore[attr-defined]
    if study is None:
        raise Http404("No such study")
    return study


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET"])
def my_studies(request: HttpRequest) -> HttpResponse:
    clinics = own_studies_everywhere(user=request.user)  # type: ignore[arg-type]
    actor = Actor.from_request(request)
    with transaction.atomic():
        for membership, studies in clinics:
            audit.record(
                actor=actor,
                action=Action.WORKLIST_VIEWED,
                target=None,
                tenant=membership.tenant,
                detail={"via": "patient_portal", "results": len(studies)},
            )
    return render(request, "sharing/my_studies.html", {"clinics": clinics})


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET"])
def my_study(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study = _own_study(request, study_id)
    series = [s for s in series_for_study(study=study) if s.num_instances]
    now = timezone.now()
    shares = [
        {"share": s, "state": s.state_at(now)}
        for s in share_list(tenant=request.tenant, created_by=request.user).filter(study=study)  # type: ignore[arg-type]
    ]
    history = study_access_history(membership=request.membership, study=study)  # type: ignore[attr-defined]
    audit.record(
        actor=Actor.from_request(request),
        action=Action.STUDY_VIEWED,
        target=study,
        tenant=request.tenant,  # type: ignore[attr-defined]
        detail={"via": "patient_portal"},
    )
    return render(
        request,
        "sharing/my_study.html",
        {"study": study, "series": series, "shares": shares, "history": history},
    )


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET"])
def my_viewer(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study = _own_study(request, study_id)
    tenant = request.tenant  # type: ignore[attr-defined]
    session = viewer_session_open(
        tenant=tenant, user=request.user, study=study, actor=Actor.from_request(request)
    )
    wado_root = reverse("viewer_dicomweb_studies", kwargs={"tenant_slug": tenant.slug})
    context = viewer_context(
        study=study,
        series=[s for s in series_for_study(study=study) if s.num_instances],
        wanted=request.GET.get("series", ""),
        session=session,
        wado_root=wado_root.removesuffix("/studies"),
        back_url=my_study_url(study),
    )
    return render(request, "imaging/viewer.html", context)


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET"])
def my_download(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    return _my_download(request, _own_study(request, study_id))


@require_step_up_if_enrolled
def _my_download(request: HttpRequest, study: Study) -> HttpResponse:
    instances = instances_for_download(study=study)
    if not instances:
        messages.error(request, "This study has no images to download yet.")
        return HttpResponseRedirect(my_study_url(study))
    actor = Actor.from_request(request)
    archive = study_zip(study=study, instances=instances, actor=actor)
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.STUDY_DOWNLOADED,
            target=study,
            tenant=request.tenant,  # type: ignore[attr-defined]
            detail={"via": "patient_portal", "instances": len(instances), "bytes": len(archive)},
        )
    return zip_response(archive, study=study)


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET", "POST"])
def my_share_new(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    return _my_share_new(request, _own_study(request, study_id))


@require_step_up_if_enrolled
def _my_share_new(request: HttpRequest, study: Study) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    series = [s for s in series_for_study(study=study) if s.num_instances]
    choices = [
        (str(s.pk), f"Series {s.series_number or '?'} · {s.modality} · {s.description}")
        for s in series
    ]
    form = PatientShareForm(
        request.POST or None,
        series=choices,
        max_days=tenant.share_link_max_days,
        initial={"expires_days": tenant.share_link_default_days, "challenge": "pin"},
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        now = timezone.now()
        try:
            share, token = share_create(
                study=study,
                actor=Actor.from_request(request),
                now=now,
                created_by=request.user,  # type: ignore[arg-type]
                series=[s for s in series if str(s.pk) in data["series"]],
                expires_at=now + dt.timedelta(days=data["expires_days"]),
                challenge=data["challenge"],
                pin=data["pin"] or None,
                max_uses=data["max_uses"],
                allow_download=data["allow_download"],
                recipient_email=data["recipient_email"],
                message=data["message"],
                notify_on_first_open=data["notify_on_first_open"],
            )
        except ShareInvalid as exc:
            form.add_error(None, str(exc))
        else:
            return render(
                request,
                "sharing/created.html",
                {
                    "share": share,
                    "url": request.build_absolute_uri(f"/s/{token}"),
                    "back_url": my_study_url(study),
                },
            )
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "sharing/new.html",
        {"study": study, "form": form, "back_url": my_study_url(study), "patient": True},
        status=status,
    )
