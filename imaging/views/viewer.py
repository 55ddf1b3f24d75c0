"""The diagnostic viewer page. Pixels come from a DICOMweb root of the portal itself."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from audit.actors import Actor
from imaging.models import Series, Study, ViewerSession
from imaging.selectors import series_for_study
from imaging.viewing import viewer_session_open
from imaging.views.study import study_for_request, study_url


def viewer_context(
    *,
    study: Study,
    series: list[Series],
    wanted: str,
    session: ViewerSession,
    wado_root: str,
    back_url: str,
    deidentified: bool = False,
) -> dict[str, Any]:
    initial = next((s for s in series if str(s.pk) == wanted), series[0] if series else None)
    thumbs = f"{wado_root}/studies/{study.study_uid}/series"
    return {
        "study": study,
        "series_rows": [
            {
                "series": s,
                "thumbnail_url": f"{thumbs}/{s.series_uid}/thumbnail?vs={session.pk}"
                if s.thumbnail_status == Series.ThumbnailStatus.READY
                else "",
            }
            for s in series
        ],
        "initial": initial,
        "viewer_session": session,
        "wado_root": wado_root,
        "back_url": back_url,
        "deidentified": deidentified,
    }


@require_http_methods(["GET"])
def viewer(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    study, access = study_for_request(request, study_id)
    if not access.images:
        raise PermissionDenied("Your role in this clinic does not include viewing images.")
    series = [s for s in series_for_study(study=study) if s.num_instances]
    session = viewer_session_open(
        tenant=request.tenant,
        user=request.user,
        study=study,
        actor=Actor.from_request(request),
        break_glass=str(access.break_glass.pk) if access.break_glass else None,
    )
    wado_root = reverse(
        "viewer_dicomweb_studies", kwargs={"tenant_slug": request.tenant.slug}
    ).removesuffix("/studies")
    return render(
        request,
        "imaging/viewer.html",
        viewer_context(
            study=study,
            series=series,
            wanted=request.GET.get("series", ""),
            session=session,
            wado_root=wado_root,
            back_url=study_url(study),
        ),
    )
