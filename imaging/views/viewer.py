"""The diagnostic viewer page. Pixels come from the clinic's own DICOMweb root."""

from __future__ import annotations

import uuid

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from audit.actors import Actor
from imaging.selectors import series_for_study
from imaging.viewing import viewer_session_open
from imaging.views.study import study_for_request


@require_http_methods(["GET"])
def viewer(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study, access = study_for_request(request, study_id)
    if not access.images:
        raise PermissionDenied("Your role in this clinic does not include viewing images.")
    series = [s for s in series_for_study(study=study) if s.num_instances]
    session = viewer_session_open(
        tenant=request.tenant, user=request.user, study=study, actor=Actor.from_request(request)
    )
    wanted = request.GET.get("series", "")
    initial = next((s for s in series if str(s.pk) == wanted), series[0] if series else None)
    return render(
        request,
        "imaging/viewer.html",
        {
            "study": study,
            "series": series,
            "initial": initial,
            "viewer_session": session,
            "wado_root": reverse(
                "viewer_dicomweb_studies", kwargs={"tenant_slug": request.tenant.slug}
            ).removesuffix("/studies"),
        },
    )
