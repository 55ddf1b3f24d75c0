"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods

from audit.models import Action
from imaging.dicomweb.auth import dicomweb_error
from imaging.dicomweb.dicomjson import search_results
from imaging.dicomweb.query import Query, QueryError, parse_query
from imaging.dicomweb.search import level_queryset, search_rows
from imaging.dicomweb.views.common import (
    DICOM_JSON,
    JSON_TYPES,
    addressed,
    audit_event,
    base_url,
    client_of,
    instances_in_reach,
    negotiated,
)
from imaging.models import Study

# PS3.18 8.3.4.4: an answer the server cut at its own limit says so.
TRUNCATED = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)
SEARCH_NOT_OFFERED = (
    f"Search results are offered as {DICOM_JSON} (the default) or application/json; DICOM "
    'XML (multipart/related; type="application/dicom+xml") is not offered.'
)


def _search(request: HttpRequest, query: Query, level: str, scope: Q | None = None) -> HttpResponse:
    client = client_of(request)
    found = search_rows(
        tenant=client.tenant,
        query=query,
        level=level,
        scope=scope,
        studies=client.studies,
        series=client.series,
        confidential=client.confidential,
    )
    cut = len(found) > query.limit
    results = search_results(found[: query.limit], level=level, base_url=base_url(request))
    # Which studies the answer showed, as the worklist and the REST study list record:
    # the results carry names, birth dates and IDs, and an auditor asks whose.
    detail = {
        "level": level,
        "results": results.count,
        "studies": results.studies,
        "keys": query.keys,  # which attributes were matched, never the values
    }
    audit_event(request, Action.DICOMWEB_SEARCH, detail)
    if results.count:
        # In the type negotiated (checked before the search): a client that names only
        # application/json gets what it named.
        media_type = negotiated(request, JSON_TYPES) or DICOM_JSON
        response = HttpResponse(results.body, content_type=media_type)
    else:
        response = HttpResponse(status=204)
    warnings = [*query.warnings, *([TRUNCATED] if cut and query.capped else [])]
    if warnings:
        response["Warning"] = ", ".join(f'299 {request.get_host()} "{text}"' for text in warnings)
    patch_vary_headers(response, ["Accept"])
    return response


def _studies(request: HttpRequest) -> QuerySet[Study]:
    client = client_of(request)
    return level_queryset(
        "study", tenant=client.tenant, studies=client.studies, confidential=client.confidential
    )


@require_http_methods(["GET", "HEAD"])
def study_access(request: HttpRequest, study: str) -> HttpResponse:
    """204 while the caller may still read the study, else the 404 of any other route.

    For the portal's viewer only: an open viewer asks this now and then, and drops the
    images it holds once access has ended. It reads no PHI, so it writes no audit event
    (it would add one every half minute of viewing).
    """
    if not addressed(request, study).exists():
        return dicomweb_error(404, "Not found.")
    return HttpResponse(status=204)


def _search_refused(request: HttpRequest, level: str) -> HttpResponse | Query:
    """The parsed query, or the 406 or 400 that refuses it (decided from the request
    alone, before anything is looked up)."""
    if negotiated(request, JSON_TYPES) is None:
        return dicomweb_error(406, SEARCH_NOT_OFFERED)
    try:
        return parse_query(request.GET, level=level)
    except QueryError as exc:
        return dicomweb_error(400, str(exc))


def search_studies(request: HttpRequest) -> HttpResponse:
    query = _search_refused(request, "study")
    if isinstance(query, HttpResponse):
        return query
    return _search(request, query, "study")


@require_http_methods(["GET", "HEAD"])
def search_series(request: HttpRequest, study: str | None = None) -> HttpResponse:
    # The query is checked before the study in the URL is looked up (here and for
    # instances): whether a query is valid never depends on what the clinic holds.
    query = _search_refused(request, "series")
    if isinstance(query, HttpResponse):
        return query
    if study is None:
        return _search(request, query, "series")
    if not _studies(request).filter(study_uid=study).exists():
        return dicomweb_error(404, "No such study.")
    return _search(request, query, "series", Q(study__study_uid=study))


@require_http_methods(["GET", "HEAD"])
def search_instances(
    request: HttpRequest, study: str | None = None, series: str | None = None
) -> HttpResponse:
    query = _search_refused(request, "instance")
    if isinstance(query, HttpResponse):
        return query
    scope = Q()
    if study is not None:
        scope &= Q(study__study_uid=study)
    if series is not None:
        scope &= Q(series__series_uid=series)
    if study is not None and not instances_in_reach(request).filter(scope).exists():
        return dicomweb_error(404, "No such study or series.")
    return _search(request, query, "instance", scope)
