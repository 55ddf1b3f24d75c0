"""The worklist and the upload page.

Search criteria are names, IDs and dates: they travel in a POST and are kept in the
session under an opaque id, so they never land in URLs, proxy logs or browser history.
"""

from __future__ import annotations

import datetime as dt
import secrets
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.forms import WorklistSearchForm
from imaging.ingest import ingest_uploads
from imaging.models import Series, Study
from imaging.selectors import DEFAULT_SORT, SORTS, WorklistQuery, masked_study_ids, study_list
from imaging.uploads import upload_file_limit_bytes, upload_too_large
from tenants.access import require_perm
from tenants.roles import Perm

PAGE_SIZE = 50
SEARCHES_KEY = "worklist_searches"
SEARCHES_KEPT = 20


def _save_search(request: HttpRequest, query: WorklistQuery) -> str:
    searches = request.session.get(SEARCHES_KEY, {})
    search_id = secrets.token_urlsafe(8)
    searches[search_id] = {
        "tenant": str(request.tenant.pk),
        "text": query.text,
        "date_from": query.date_from.isoformat() if query.date_from else "",
        "date_to": query.date_to.isoformat() if query.date_to else "",
        "modality": query.modality,
        "referring": query.referring,
    }
    request.session[SEARCHES_KEY] = dict(list(searches.items())[-SEARCHES_KEPT:])
    return search_id


def _load_search(request: HttpRequest, search_id: str) -> WorklistQuery | None:
    saved = request.session.get(SEARCHES_KEY, {}).get(search_id)
    if not saved or saved.get("tenant") != str(request.tenant.pk):
        return None
    return WorklistQuery(
        text=saved["text"],
        date_from=dt.date.fromisoformat(saved["date_from"]) if saved["date_from"] else None,
        date_to=dt.date.fromisoformat(saved["date_to"]) if saved["date_to"] else None,
        modality=saved["modality"],
        referring=saved["referring"],
    )


def _thumbnails(studies: list[Study]) -> dict:
    """The first series with a thumbnail, per study."""
    found: dict = {}
    if not studies:
        return found
    tenant = studies[0].tenant
    ready = (
        Series.objects.for_tenant(tenant)
        .filter(study__in=[s.pk for s in studies], thumbnail_status=Series.ThumbnailStatus.READY)
        .order_by("study_id", "series_number", "created_at")
    )
    for series in ready:
        found.setdefault(series.study_id, series)
    return found


@require_perm(Perm.WORKLIST_VIEW, Perm.STUDY_VIEW_GRANTED)
@require_http_methods(["GET", "POST"])
def worklist(request: HttpRequest) -> HttpResponse:
    here = reverse("worklist", kwargs={"tenant_slug": request.tenant.slug})
    params = request.POST if request.method == "POST" else request.GET
    sort = params.get("sort", DEFAULT_SORT)
    sort = sort if sort in SORTS else DEFAULT_SORT
    refused = False
    if request.method == "POST":
        form = WorklistSearchForm(request.POST)
        if form.is_valid():
            query = form.query()
            shown = {} if query.is_empty else {"s": _save_search(request, query)}
            # The list comes back in the order it was in (the search form carries it).
            if sort != DEFAULT_SORT:
                shown["sort"] = sort
            return HttpResponseRedirect(f"{here}?{urlencode(shown)}" if shown else here)
        # A search that cannot run lists nothing: the whole list under its error would
        # read as that search's result.
        query, refused = None, True
    else:
        query = None
        search_id = request.GET.get("s", "")
        if search_id:
            query = _load_search(request, search_id)
            if query is None:
                messages.info(request, "That search has expired; search again.")
                return HttpResponseRedirect(here)
        form = WorklistSearchForm(initial=query.__dict__ if query else None)
    membership = request.membership
    now = timezone.now()
    studies = study_list(membership=membership, now=now, query=query, sort=sort)
    if refused:
        studies = studies.none()
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page)
    masked = masked_study_ids(membership=membership, studies=rows, now=now)
    show_images = membership.has_perm(Perm.IMAGES_VIEW)
    thumbnails = _thumbnails([s for s in rows if s.pk not in masked]) if show_images else {}
    # Demographics are PHI: every page shown is audited (ids, never the search text).
    audit.record(
        actor=Actor.from_request(request),
        action=Action.WORKLIST_VIEWED,
        target=None,
        tenant=request.tenant,
        # Masked rows showed no demographics; which fields a search used (never what
        # was typed) tells an empty page from a search that found nothing.
        detail={
            "page": page.number,
            "studies": [str(s.pk) for s in rows],
            "masked": [str(s.pk) for s in rows if s.pk in masked],
            "searched": query is not None,
            "search_fields": query.fields if query is not None else [],
        },
    )
    search_id = request.GET.get("s", "") if query is not None else ""
    return render(
        request,
        "imaging/worklist.html",
        {
            "form": form,
            "page": page,
            "rows": [
                {"study": s, "masked": s.pk in masked, "thumbnail": thumbnails.get(s.pk)}
                for s in rows
            ],
            "searched": query is not None,
            "refused": refused,
            "search_id": search_id,
            "sort": sort,
            "show_images": show_images,
        },
        status=400 if refused else 200,
    )


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _upload_page(
    request: HttpRequest, context: dict[str, object], *, status: int = 200
) -> HttpResponse:
    # The page's script refuses a file over the limit before sending it: a browser cut
    # off mid-upload sees a reset connection, not the 413 that names the file.
    limit = upload_file_limit_bytes()
    context = {**context, "upload_limit_bytes": limit, "upload_limit_mb": limit // 2**20}
    return render(request, "imaging/upload.html", context, status=status)


def _upload_refused(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": message}, status=status)
    return _upload_page(request, {"error": message}, status=status)


@require_perm(Perm.STUDY_UPLOAD)
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _upload_page(request, {})
    files = request.FILES.getlist("files")
    too_large = upload_too_large(request)
    if too_large is not None:
        return _upload_refused(
            request,
            f"“{too_large.name}” is larger than one file of an upload may be "
            f"({too_large.limit_bytes // 2**20:,} MB), so nothing was stored. Upload it "
            "in smaller zips, or its files themselves.",
            status=413,
        )
    if not files:
        return _upload_refused(
            request, "Choose at least one DICOM file, folder or zip archive.", status=400
        )
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
    return _upload_page(request, {"summary": summary, "results": summary.results})
