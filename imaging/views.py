"""Staff pages for studies: the worklist and the upload page."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.ingest import ingest_uploads
from imaging.selectors import study_list
from tenants.access import require_perm
from tenants.roles import Perm

PAGE_SIZE = 50


@require_perm(Perm.WORKLIST_VIEW, Perm.STUDY_VIEW_GRANTED)
def worklist(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")[:100]
    studies = study_list(membership=request.membership, query=query)
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page)
    # Demographics are PHI: every page shown is audited (ids, never the search text).
    audit.record(
        actor=Actor.from_request(request),
        action=Action.WORKLIST_VIEWED,
        target=None,
        tenant=request.tenant,
        detail={"page": page.number, "studies": [str(s.pk) for s in rows], "searched": bool(query)},
    )
    return render(request, "imaging/worklist.html", {"page": page, "studies": rows, "q": query})


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_perm(Perm.STUDY_UPLOAD)
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "imaging/upload.html", {})
    files = request.FILES.getlist("files")
    if not files:
        message = "Choose at least one DICOM file, folder or zip archive."
        if _wants_json(request):
            return JsonResponse({"error": message}, status=400)
        return render(request, "imaging/upload.html", {"error": message}, status=400)
    summary = ingest_uploads(tenant=request.tenant, actor=Actor.from_request(request), files=files)
    if _wants_json(request):
        return JsonResponse(
            {
                "summary": summary.line,
                "results": [
                    {"name": r.name, "outcome": r.outcome, "message": r.message}
                    for r in summary.results
                ],
            }
        )
    return render(request, "imaging/upload.html", {"summary": summary, "results": summary.results})
