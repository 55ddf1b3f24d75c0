"""The patient portal: a patient's own studies from every clinic that linked them.

A patient sees, views, downloads and shares only studies of the Patient records their
account is linked to (`sharing.selectors.own_studies`); any other study, of the same
clinic or another, is the same 404 as a missing one. Every read is audited.
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.models import Study
from imaging.selectors import series_for_study
from imaging.viewing import viewer_session_open
from imaging.views.study import study_download_response
from imaging.views.viewer import viewer_context
from sharing.forms import PatientShareForm
from sharing.selectors import (
    own_studies_everywhere,
    own_study_get,
    share_list,
    study_access_history,
)
from sharing.views import share_form_page
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
                detail={
                    "via": "patient_portal",
                    "results": len(studies),
                    "studies": [str(study.pk) for study in studies],
                },
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
        for s in share_list(membership=request.membership).filter(study=study)  # type: ignore[attr-defined]
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
    return study_download_response(
        request, study, back_url=my_study_url(study), via="patient_portal"
    )


@require_perm(Perm.OWN_STUDIES)
@require_http_methods(["GET", "POST"])
def my_share_new(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    return _my_share_new(request, _own_study(request, study_id))


@require_step_up_if_enrolled
def _my_share_new(request: HttpRequest, study: Study) -> HttpResponse:
    return share_form_page(
        request, study, form_class=PatientShareForm, back_url=my_study_url(study), as_patient=True
    )
