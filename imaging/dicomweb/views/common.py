"""What every DICOMweb view shares: the caller, the instances in its reach, audit, and
content negotiation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.dicomweb.auth import DicomwebClient
from imaging.dicomweb.multipart import accept_range
from imaging.dicomweb.search import level_queryset
from imaging.models import Instance, Series
from imaging.viewing import pixel_read_audit

DICOM_JSON = "application/dicom+json"
# A stored object failed its check (audited where found) before its answer started.
INTEGRITY_FAILED_TEXT = "A stored object failed its integrity check; it was not served."


def client_of(request: HttpRequest) -> DicomwebClient:
    return request.dicomweb  # type: ignore[attr-defined]


def actor_of(request: HttpRequest) -> Actor:
    return client_of(request).actor


def base_url(request: HttpRequest) -> str:
    # The root this request came in on: /dicomweb or a clinic's /t/<slug>/dicomweb.
    path = request.path
    root = path[: path.index("/dicomweb/") + len("/dicomweb")] if "/dicomweb/" in path else path
    return request.build_absolute_uri(root).rstrip("/")


def _head(request: HttpRequest, detail: dict[str, Any]) -> dict[str, Any]:
    # A HEAD answer is the GET's headers without its body: what it says (a search's
    # 200 or 204, a length) is still about a patient's records, so it is audited, and
    # the log says that only headers were sent.
    return {**detail, "head": True} if request.method == "HEAD" else detail


def audit_event(request: HttpRequest, action: Action, detail: dict[str, Any]) -> None:
    client = client_of(request)
    detail = _head(request, detail)
    audit.record(
        actor=client.actor, action=action, target=None, tenant=client.tenant, detail=detail
    )


def audit_read(
    request: HttpRequest,
    series: list[Series],
    detail: dict[str, Any],
    *,
    rows: Sequence[Instance] = (),
) -> None:
    """Pixel and metadata reads: once per series under a viewer session, else each time.

    A read of one instance (`rows`) names it: "who saw what" down to the image, where a
    series has hundreds."""
    client = client_of(request)
    if len(rows) == 1:
        detail = {**detail, "instance": str(rows[0].pk)}
    unique = list({s.pk: s for s in series}.values())
    pixel_read_audit(
        tenant=client.tenant,
        actor=client.actor,
        # A HEAD shows no image: it is its own event, and no series counts as viewed.
        viewer_session=None if request.method == "HEAD" else client.viewer_session,
        series=unique,
        detail=_head(request, detail),
    )


def headers_only(content_type: str) -> HttpResponse:
    """HEAD's answer to a read, once its checks passed and it is audited: the GET's type
    and no length (RFC 9110 9.3.2 lets it be left out), since the length would take
    decrypting, decoding or rendering what is not sent."""
    response = StreamingHttpResponse(iter(()), content_type=content_type)
    patch_vary_headers(response, ["Accept"])
    return response


def instances_in_reach(request: HttpRequest) -> QuerySet[Instance]:
    client = client_of(request)
    # No clinic filter on the joined study or patient: the instance's own (tenant, UID)
    # indexes lead, and naming the patient's clinic made PostgreSQL scan every patient.
    return level_queryset(
        "instance",
        tenant=client.tenant,
        studies=client.studies,
        series=client.series,
        confidential=client.confidential,
    )


def addressed(
    request: HttpRequest, study: str, series: str | None = None, instance: str | None = None
) -> QuerySet[Instance]:
    """The clinic's instances under a WADO-RS path: a study, a series or one instance."""
    instances = instances_in_reach(request).filter(study__study_uid=study)
    if series is not None:
        instances = instances.filter(series__series_uid=series)
    if instance is not None:
        instances = instances.filter(sop_instance_uid=instance)
    return instances


def accept_of(request: HttpRequest) -> str:
    """What the client accepts: the `accept` query parameter if given (PS3.18 8.3.3.1,
    for links that cannot set a header), else the Accept header."""
    return request.GET.get("accept") or request.headers.get("Accept", "")


def negotiated(request: HttpRequest, offered: tuple[str, ...]) -> str | None:
    """The media type of `offered` (the server's preference first, its default) that
    the request's Accept ranks highest; None if Accept admits none of them.

    Each offered type takes the q of the most specific range naming it (RFC 9110
    12.5.1): type/subtype, then type/*, then */*; so `image/*, image/jpeg;q=0` refuses
    JPEG, and q=0 anywhere means "not this one". Equal qualities go to a type named
    outright over one a wildcard admits, then to the one listed first, then to the
    server's order: `*/*`, `image/*` and no Accept at all get the default. A range's
    parameters other than q are not matched (none of the types offered takes any).
    Django's `HttpRequest.get_preferred_type` is not used: it drops q=0 ranges rather
    than letting them refuse a type a wildcard admits, and a range with parameters
    (`application/dicom+json; charset=utf-8`) does not match a type offered without.
    """
    accept = accept_of(request).strip() or "*/*"
    ranges: list[tuple[str, float, int]] = []  # (media range, q, position)
    for position, item in enumerate(accept.split(",")):
        if not item.strip():
            continue
        media, params = accept_range(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            continue
        if not 0 <= quality <= 1:
            continue  # nan and the like: malformed
        ranges.append((media, quality, position))
    best: tuple[float, int, int, int] | None = None
    chosen = None
    for preference, offer in enumerate(offered):
        specificity_of = {offer: 2, f"{offer.partition('/')[0]}/*": 1, "*/*": 0}
        matching = [(specificity_of[m], q, p) for m, q, p in ranges if m in specificity_of]
        if not matching:
            continue
        specificity = max(named for named, _, _ in matching)
        # The most specific ranges decide; of those (a type listed twice), the best q.
        quality, earliest = max((q, -p) for named, q, p in matching if named == specificity)
        if quality == 0:
            continue
        rank = (quality, specificity, earliest, -preference)
        if best is None or rank > best:
            best, chosen = rank, offer
    return chosen


# What `negotiated` chooses among, the default first, and the 406 naming them. A 406
# is decided from the request alone, before anything is looked up: it says nothing
# about whether the addressed object exists, and reads and audits nothing.
# Search results, store responses and metadata: one DICOM JSON body, either name.
JSON_TYPES = (DICOM_JSON, "application/json")
