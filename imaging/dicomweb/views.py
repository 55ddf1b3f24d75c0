"""DICOMweb (PS3.18): QIDO-RS search, WADO-RS retrieve and metadata, STOW-RS store."""

from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import pydicom
from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods
from PIL import Image
from pydicom.filewriter import dcmwrite

import audit
from audit.actors import Actor
from audit.models import Action
from imaging.crypto import IntegrityError
from imaging.deidentify import DeidentifyRefused, deidentified_bytes, deidentify
from imaging.dicom import (
    FLOAT_PIXEL_VRS,
    PIXEL_DATA,
    metadata_dict,
    valid_uid,
)
from imaging.dicomweb.auth import DicomwebClient, dicomweb_error
from imaging.dicomweb.bulkdata import (
    MAX_DECODED_BYTES,
    WORDS,
    NoSuchAttribute,
    bulk_data_bytes,
    bulk_path_valid,
    decoded_size,
    little_endian,
    stored_frames,
    stored_pixel_bytes,
)
from imaging.dicomweb.dicomjson import search_results
from imaging.dicomweb.multipart import (
    BodyTooLarge,
    MultipartError,
    PartTooLarge,
    content_type_parameters,
    iter_related_parts,
    limited_reader,
    new_boundary,
    related_length,
    related_stream,
)
from imaging.dicomweb.pixels import (
    EXPLICIT_VR_LE,
    OCTET_STREAM,
    PixelForm,
    any_pixel_form,
    not_offered_message,
    pixel_form,
    pixel_offers,
)
from imaging.dicomweb.query import Query, QueryError, parse_query
from imaging.dicomweb.search import level_queryset, search_rows
from imaging.dicomweb.stow_json import METADATA_TYPE, JsonStow, Rebuilt
from imaging.ingest import IngestOutcome, ingest_many
from imaging.metadata import metadata_for_instance, metadata_item
from imaging.models import Instance, Series, Study
from imaging.render import (
    FramesTooLarge,
    NoSuchFrame,
    RenderError,
    frame_number_check,
    frames_native_bytes,
    rendered_file,
)
from imaging.selectors import instance_by_uids, instances_for_reading
from imaging.services import (
    instance_bytes,
    instance_header_json,
    instance_process_result,
    instance_process_start,
    instance_study_key,
    instances_chunks,
    thumbnail_bytes,
)
from imaging.viewing import pixel_read_audit, pixel_read_unserved_audit

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_DUPLICATE_CONFLICT = 0x0111
FAILURE_TRANSFER_SYNTAX = 0xC122  # Referenced Transfer Syntax not supported
WARNING_COERCION = 0xB000  # Coercion of data elements: the file meta was corrected
# Why a part failed, for the Warning header field, where ingest gives no text of its own.
STORE_FAILED_TEXT = "The file could not be stored; nothing of it was kept. Send it again."
PART_TOO_LARGE_TEXT = "A part is larger than the per-instance limit."
NOT_DICOM_PART_TEXT = "A part is not application/dicom, the type the request declared."
BODY_CUT_TEXT = "The request body ended before its closing boundary."
UNFORESEEN_PART_TEXT = "A part could not be read as metadata or bulk data."
MAX_WARNINGS = 10
# Ingest's texts that quote a parser's message (which can quote a value), said without it.
STOW_TEXT_BY_CODE = {
    "malformed": "The file could not be parsed as DICOM: an element or sequence is malformed.",
    "meta_mismatch": (
        "The file meta information (group 0002) does not name the SOP instance and class "
        "of its data set, and could not be corrected. Write the file again with a DICOM "
        "toolkit and send it again."
    ),
}

T = TypeVar("T")


def _client(request: HttpRequest) -> DicomwebClient:
    return request.dicomweb  # type: ignore[attr-defined]


def _actor(request: HttpRequest) -> Actor:
    return _client(request).actor


def _base_url(request: HttpRequest) -> str:
    # The root this request came in on: /dicomweb or a clinic's /t/<slug>/dicomweb.
    path = request.path
    root = path[: path.index("/dicomweb/") + len("/dicomweb")] if "/dicomweb/" in path else path
    return request.build_absolute_uri(root).rstrip("/")


def _head(request: HttpRequest, detail: dict[str, Any]) -> dict[str, Any]:
    # A HEAD answer is the GET's headers without its body: what it says (a search's
    # 200 or 204, a length) is still about a patient's records, so it is audited, and
    # the log says that only headers were sent.
    return {**detail, "head": True} if request.method == "HEAD" else detail


def _audit(request: HttpRequest, action: Action, detail: dict[str, Any]) -> None:
    client = _client(request)
    detail = _head(request, detail)
    audit.record(
        actor=client.actor, action=action, target=None, tenant=client.tenant, detail=detail
    )


def _audit_read(
    request: HttpRequest,
    series: list[Series],
    detail: dict[str, Any],
    *,
    rows: Sequence[Instance] = (),
) -> None:
    """Pixel and metadata reads: once per series under a viewer session, else each time.

    A read of one instance (`rows`) names it: "who saw what" down to the image, where a
    series has hundreds."""
    client = _client(request)
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


def _json(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, safe=False, content_type=DICOM_JSON)


def _headers_only(content_type: str) -> HttpResponse:
    """HEAD's answer to a read, once its checks passed and it is audited: the GET's type
    and no length (RFC 9110 9.3.2 lets it be left out), since the length would take
    decrypting, decoding or rendering what is not sent."""
    response = StreamingHttpResponse(iter(()), content_type=content_type)
    patch_vary_headers(response, ["Accept"])
    return response


# --- QIDO-RS --------------------------------------------------------------------------

# PS3.18 8.3.4.4: an answer the server cut at its own limit says so.
TRUNCATED = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


def _search(request: HttpRequest, query: Query, level: str, scope: Q | None = None) -> HttpResponse:
    client = _client(request)
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
    results = search_results(found[: query.limit], level=level, base_url=_base_url(request))
    # Which studies the answer showed, as the worklist and the REST study list record:
    # the results carry names, birth dates and IDs, and an auditor asks whose.
    detail = {
        "level": level,
        "results": results.count,
        "studies": results.studies,
        "keys": query.keys,  # which attributes were matched, never the values
    }
    _audit(request, Action.DICOMWEB_SEARCH, detail)
    if results.count:
        response = HttpResponse(results.body, content_type=DICOM_JSON)
    else:
        response = HttpResponse(status=204)
    warnings = [*query.warnings, *([TRUNCATED] if cut and query.capped else [])]
    if warnings:
        response["Warning"] = ", ".join(f'299 {request.get_host()} "{text}"' for text in warnings)
    patch_vary_headers(response, ["Accept"])
    return response


def _studies(request: HttpRequest) -> QuerySet[Study]:
    client = _client(request)
    return level_queryset(
        "study", tenant=client.tenant, studies=client.studies, confidential=client.confidential
    )


def _series(request: HttpRequest) -> QuerySet[Series]:
    client = _client(request)
    series = level_queryset(
        "series",
        tenant=client.tenant,
        studies=client.studies,
        series=client.series,
        confidential=client.confidential,
    )
    return series.select_related("tenant", "study", "study__patient")


def _instances(request: HttpRequest) -> QuerySet[Instance]:
    client = _client(request)
    # No clinic filter on the joined study or patient: the instance's own (tenant, UID)
    # indexes lead, and naming the patient's clinic made PostgreSQL scan every patient.
    return level_queryset(
        "instance",
        tenant=client.tenant,
        studies=client.studies,
        series=client.series,
        confidential=client.confidential,
    )


def _read(
    request: HttpRequest, instances: QuerySet[Instance], *, headers: bool = False
) -> list[Instance]:
    return instances_for_reading(
        tenant=_client(request).tenant, instances=instances, headers=headers
    )


def _addressed(
    request: HttpRequest, study: str, series: str | None = None, instance: str | None = None
) -> QuerySet[Instance]:
    """The clinic's instances under a WADO-RS path: a study, a series or one instance."""
    instances = _instances(request).filter(study__study_uid=study)
    if series is not None:
        instances = instances.filter(series__series_uid=series)
    if instance is not None:
        instances = instances.filter(sop_instance_uid=instance)
    return instances


@require_http_methods(["GET", "HEAD"])
def study_access(request: HttpRequest, study: str) -> HttpResponse:
    """204 while the caller may still read the study, else the 404 of any other route.

    For the portal's viewer only: an open viewer asks this now and then, and drops the
    images it holds once access has ended. It reads no PHI, so it writes no audit event
    (it would add one every half minute of viewing).
    """
    if not _addressed(request, study).exists():
        return dicomweb_error(404, "Not found.")
    return HttpResponse(status=204)


@require_http_methods(["GET", "HEAD", "POST"])
def studies(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return store(request)
    return search_studies(request)


def _search_refused(request: HttpRequest, level: str) -> HttpResponse | Query:
    """The parsed query, or the 406 or 400 that refuses it (decided from the request
    alone, before anything is looked up)."""
    if _negotiated(request, JSON_TYPES) is None:
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
    if study is not None and not _instances(request).filter(scope).exists():
        return dicomweb_error(404, "No such study or series.")
    return _search(request, query, "instance", scope)


# --- WADO-RS --------------------------------------------------------------------------


class NotAcceptable(Exception):
    pass


def _accept(request: HttpRequest) -> str:
    """What the client accepts: the `accept` query parameter if given (PS3.18 8.3.3.1,
    for links that cannot set a header), else the Accept header."""
    return request.GET.get("accept") or request.headers.get("Accept", "")


def _negotiated(request: HttpRequest, offered: tuple[str, ...]) -> str | None:
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
    accept = _accept(request).strip() or "*/*"
    ranges: list[tuple[str, float, int]] = []  # (media range, q, position)
    for position, item in enumerate(accept.split(",")):
        if not item.strip():
            continue
        _, params = content_type_parameters(item.strip())
        media = item.partition(";")[0].strip().lower()
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            continue
        if not 0 <= quality <= 1:
            continue  # nan and the like: malformed
        # A bare * is how some old HTTP stacks (Java's among them) write */*.
        ranges.append(("*/*" if media == "*" else media, quality, position))
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


# What `_negotiated` chooses among, the default first, and the 406 naming them. A 406
# is decided from the request alone, before anything is looked up: it says nothing
# about whether the addressed object exists, and reads and audits nothing.
# Search results, store responses and metadata: one DICOM JSON body, either name.
JSON_TYPES = (DICOM_JSON, "application/json")
SEARCH_NOT_OFFERED = (
    f"Search results are offered as {DICOM_JSON} (the default) or application/json; DICOM "
    'XML (multipart/related; type="application/dicom+xml") is not offered.'
)
STORE_NOT_OFFERED = (
    f"The store response is offered as {DICOM_JSON} (the default) or application/json; "
    "DICOM XML (application/dicom+xml) is not offered."
)
METADATA_NOT_OFFERED = (
    f"Metadata is offered as {DICOM_JSON} (the default) or application/json; DICOM XML "
    '(multipart/related; type="application/dicom+xml") is not offered.'
)
# What imaging.render encodes: image/gif, image/jp2 and video are not offered.
RENDERED_TYPES = ("image/jpeg", "image/png")
RENDERED_NOT_OFFERED = "Rendered images are offered as image/jpeg (the default) or image/png."
# Thumbnails are stored as PNG: sent as stored unless JPEG is preferred (PS3.18
# 10.4.3.3.4 leaves a thumbnail's representation to the origin server).
THUMBNAIL_TYPES = ("image/png", "image/jpeg")
THUMBNAIL_NOT_OFFERED = "Thumbnails are offered as image/png (the default) or image/jpeg."


def _requested_transfer_syntaxes(request: HttpRequest) -> list[str]:
    """The transfer syntaxes asked for, most preferred first: '*' (as stored) or UIDs.

    Every entry of the Accept header counts, by its q (RFC 9110 12.5.1): clients such
    as dicomweb-client list a specific syntax, then `transfer-syntax=*` as a fallback.
    """
    accept = _accept(request) or "*/*"
    offers: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, params = content_type_parameters(item.strip())
        if media not in ("*/*", "multipart/related", "application/dicom"):
            continue
        part_type = params.get("type", "application/dicom").strip('"').lower()
        if part_type not in ("application/dicom", "*/*"):
            continue
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            continue
        if not 0 < quality <= 1:
            continue  # 0: "not this one"; nan and the like: malformed
        # PS3.18 8.7.3.5.2: the default transfer syntax, `*/*` and no Accept included.
        syntax = params.get("transfer-syntax", EXPLICIT_VR_LE)
        offers.append((-quality, position, syntax))
    if not offers:
        raise NotAcceptable(
            'Only multipart/related; type="application/dicom" is offered for this resource.'
        )
    return [syntax for _, _, syntax in sorted(offers)]


def _syntax_for(stored: str, wanted: list[str], *, decoded_only: bool = False) -> str | None:
    """The syntax an instance stored in `stored` goes out in, or None if none asked for
    can be served (stored as is, or transcoded to explicit VR little endian).

    `decoded_only` (de-identified objects) never sends compressed pixel data as stored:
    a bitstream can carry text that de-identifying the header never sees.
    """
    as_stored = not (decoded_only and pydicom.uid.UID(stored).is_encapsulated)
    for syntax in wanted:
        if syntax in ("*", stored) and as_stored:
            return stored
        if syntax in ("*", EXPLICIT_VR_LE):
            return EXPLICIT_VR_LE
    return None


class RetrieveCutShort(Exception):
    """An object could not be prepared after its answer had started streaming."""


# How many bytes of re-encoded or de-identified objects a retrieve prepares before its
# answer starts (see _retrieve).
PREPARE_AHEAD_BYTES = 64 << 20
# A stored object larger than this is not re-encoded or de-identified: it would be held
# whole in memory several times over (stored, parsed, written).
MAX_PREPARED_BYTES = 256 << 20


def _transcode(data: bytes, target: str) -> bytes:
    """Re-encode to explicit VR little endian, decoding compressed pixel data if needed."""
    if target != EXPLICIT_VR_LE:
        raise NotAcceptable(
            f"Transcoding to {target} is not offered; ask for * or {EXPLICIT_VR_LE}."
        )
    ds = pydicom.dcmread(io.BytesIO(data))
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    if compressed and decoded_size(ds) > MAX_DECODED_BYTES:
        # Decoded whole in memory: a few stored bytes can claim gigabytes of pixels.
        raise NotAcceptable(
            "The stored image is too large to decode at once; ask for transfer-syntax=* "
            "to receive it as stored, or for its frames."
        )
    try:
        if compressed:
            ds.decompress()
    except Exception as exc:
        raise NotAcceptable(f"The stored image cannot be decoded losslessly ({exc}).") from None
    out = io.BytesIO()
    try:
        if ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_BE:
            _from_big_endian(ds, out)
        else:
            ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
            ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as exc:  # odd stored headers fail deep in pydicom in many shapes
        raise NotAcceptable(
            f"The stored object cannot be re-encoded ({type(exc).__name__}); ask for "
            "transfer-syntax=* to receive it as stored."
        ) from None
    return out.getvalue()


def _from_big_endian(ds: pydicom.Dataset, out: io.BytesIO) -> None:
    # pydicom re-encodes the attributes it decodes, but writes OW, OL, OF, OD and OV
    # values (palette tables, overlays, ...) as the bytes it holds: those are swapped
    # here word by word, and pixel data a pixel (or a word) at a time, bit for bit.
    if "PixelData" in ds:
        ds.PixelData = stored_pixel_bytes(ds)
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"

    def swapped(dataset: pydicom.Dataset, element: pydicom.DataElement) -> None:
        word_valued = element.VR in WORDS and isinstance(element.value, bytes)
        if word_valued and element.keyword != "PixelData":
            element.value = little_endian(element, big_endian=True)

    ds.walk(swapped)
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    ds.preamble = ds.preamble or bytes(128)
    dcmwrite(out, ds, implicit_vr=False, little_endian=True, force_encoding=True)


def _retrieve(request: HttpRequest, instances: QuerySet[Instance]) -> HttpResponse:
    try:
        wanted = _requested_transfer_syntaxes(request)
    except NotAcceptable as exc:
        return dicomweb_error(406, str(exc))
    rows = _read(request, instances)
    if not rows:
        return dicomweb_error(404, "Not found.")
    actor = _actor(request)
    pseudonym = _client(request).pseudonym
    syntaxes = {
        r.pk.hex: _syntax_for(r.transfer_syntax_uid, wanted, decoded_only=pseudonym is not None)
        for r in rows
    }
    if None in syntaxes.values():
        return dicomweb_error(
            406,
            f"Transcoding to {', '.join(wanted)} is not offered; ask for "
            f"transfer-syntax=* (as stored) or {EXPLICIT_VR_LE}."
            if pseudonym is None
            else "De-identified objects are sent with their images decoded, as "
            f"{EXPLICIT_VR_LE}; ask for that transfer syntax or *.",
        )
    transcoded = {r.pk.hex for r in rows if syntaxes[r.pk.hex] != r.transfer_syntax_uid}
    # Re-encoded or de-identified objects are prepared whole, in memory.
    to_prepare = [r for r in rows if r.pk.hex in transcoded or pseudonym is not None]

    def prepare(row: Instance) -> bytes:
        data = instance_bytes(instance=row, actor=actor)
        if row.pk.hex in transcoded:
            data = _transcode(data, EXPLICIT_VR_LE)
        if pseudonym is not None:
            data = deidentified_bytes(data, pseudonym=pseudonym)
        return data

    prepared: dict[str, bytes] = {}
    try:
        # A study key that cannot be opened fails every object of the study: say so
        # before the answer starts, rather than cut the stream at its first object.
        for row in {r.study_id: r for r in rows}.values():
            instance_study_key(instance=row, actor=actor)
        if too_large := [r for r in to_prepare if r.size_bytes > MAX_PREPARED_BYTES]:
            raise NotAcceptable(
                f"An instance ({too_large[0].sop_instance_uid}) is too large to "
                + (
                    "re-encode at once; ask for transfer-syntax=* to receive it as stored."
                    if pseudonym is None
                    else "de-identify at once; ask the clinic for it."
                )
            )
        # The first objects are prepared before the answer starts, so a failure is a
        # 406 and the length is known; past PREPARE_AHEAD_BYTES the rest are prepared one
        # at a time as their parts go out, so a whole study holds one object in memory.
        held = 0
        for row in to_prepare:
            if held > PREPARE_AHEAD_BYTES or request.method == "HEAD":
                break  # HEAD: its length would take preparing what is not sent
            prepared[row.pk.hex] = prepare(row)
            held += len(prepared[row.pk.hex])
    except (NotAcceptable, DeidentifyRefused) as exc:
        return dicomweb_error(406, str(exc))
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    later = {r.pk.hex for r in to_prepare} - prepared.keys()

    def content_type(row: Instance) -> str:
        return f"application/dicom; transfer-syntax={syntaxes[row.pk.hex]}"

    def prepared_late(row: Instance) -> bytes:
        try:
            return prepare(row)
        except IntegrityError:
            raise  # audited where it was found, and it cuts the body short too
        except Exception as exc:  # pydicom fails on odd stored headers in many shapes
            # The answer has started: end it without its closing delimiter, so the
            # client sees it cut short rather than a whole answer missing an object.
            # The read was audited as it started; the log says this one was not sent.
            logger.warning(
                "retrieve cut short: instance %s could not be prepared (%s)",
                row.pk,
                type(exc).__name__,
            )
            client = _client(request)
            pixel_read_unserved_audit(
                tenant=client.tenant,
                actor=client.actor,
                instance=row,
                detail={"instances": 1, "reason": "not_decodable", "cut_short": True},
            )
            raise RetrieveCutShort(str(row.pk)) from None

    def parts() -> Iterator[tuple[str, Iterator[bytes]]]:
        stored = instances_chunks(  # each checked against its size_bytes
            instances=[r for r in rows if r.pk.hex not in prepared and r.pk.hex not in later],
            actor=actor,
        )
        for row in rows:
            key = row.pk.hex
            if key in prepared:
                chunks = iter([prepared.pop(key)])  # let go of it once sent
            elif key in later:
                chunks = iter([prepared_late(row)])
            else:
                chunks = next(stored)
            yield content_type(row), chunks

    _audit_read(request, [r.series for r in rows], {"instances": len(rows)}, rows=rows)
    lengths = {key: len(data) for key, data in prepared.items()}
    boundary, body = related_stream(parts())
    response = StreamingHttpResponse(
        body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    patch_vary_headers(response, ["Accept"])  # the transfer syntax follows it
    if not later:
        # Known up front, so clients can show progress and tell a cut-off body from a
        # whole one, and the body goes out as is rather than chunked.
        response["Content-Length"] = related_length(
            boundary,
            ((content_type(r), lengths.get(r.pk.hex, r.size_bytes)) for r in rows),
        )
    return response


@require_http_methods(["GET", "HEAD"])
def retrieve_study(request: HttpRequest, study: str) -> HttpResponse:
    return _retrieve(request, _addressed(request, study))


@require_http_methods(["GET", "HEAD"])
def retrieve_series(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _retrieve(request, _addressed(request, study, series))


@require_http_methods(["GET", "HEAD"])
def retrieve_instance(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _retrieve(request, _addressed(request, study, series, instance))


# Pixel data is OW as these hold it uncompressed (PS3.5 8.2), OB encapsulated; its bulk
# data is served uncompressed either way.
_NATIVE_SYNTAXES = {EXPLICIT_VR_LE, EXPLICIT_VR_BE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"}


def _pixel(row: Instance) -> tuple[str, str] | None:
    """The pixel data's tag and VR in metadata; None when the instance has none."""
    tag = row.pixel_tag
    if tag is None:  # a row stored before the tag was kept: an image has Pixel Data
        tag = PIXEL_DATA if row.rows is not None else ""
    if not tag:
        return None
    if tag in FLOAT_PIXEL_VRS:
        return tag, FLOAT_PIXEL_VRS[tag]
    return tag, "OW" if row.transfer_syntax_uid in _NATIVE_SYNTAXES else "OB"


def _metadata(request: HttpRequest, instances: QuerySet[Instance]) -> HttpResponse:
    media_type = _negotiated(request, JSON_TYPES)
    if media_type is None:
        return dicomweb_error(406, METADATA_NOT_OFFERED)
    rows = _read(request, instances, headers=True)
    if not rows:
        return dicomweb_error(404, "Not found.")
    if request.method == "HEAD":
        _audit_read(request, [r.series for r in rows], {"metadata": len(rows)}, rows=rows)
        return _headers_only(media_type)
    actor = _actor(request)
    pseudonym = _client(request).pseudonym
    base = _base_url(request)
    keys: dict[Any, bytes] = {}
    items = []
    try:
        for row in rows:
            uri = (
                f"{base}/studies/{row.study.study_uid}/series/{row.series.series_uid}"
                f"/instances/{row.sop_instance_uid}"
            )
            pixel = _pixel(row)
            item = None
            if pseudonym is None:
                if row.study_id not in keys:
                    keys[row.study_id] = instance_study_key(instance=row, actor=actor)
                header = instance_header_json(instance=row, actor=actor, key=keys[row.study_id])
                if header:
                    item = metadata_for_instance(header, instance_uri=uri, pixel=pixel)
            if item is None:
                # De-identified clients, and rows stored before headers (or bulk data
                # paths) were kept: parse.
                ds = pydicom.dcmread(
                    io.BytesIO(instance_bytes(instance=row, actor=actor)), stop_before_pixels=True
                )
                if pseudonym is not None:
                    deidentify(ds, pseudonym=pseudonym)
                item = metadata_item(metadata_dict(ds), instance_uri=uri, pixel=pixel)
            items.append(item)
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    _audit_read(request, [r.series for r in rows], {"metadata": len(rows)}, rows=rows)
    response = HttpResponse(b"[" + b",".join(items) + b"]", content_type=media_type)
    patch_vary_headers(response, ["Accept"])
    return response


@require_http_methods(["GET", "HEAD"])
def metadata_study(request: HttpRequest, study: str) -> HttpResponse:
    return _metadata(request, _addressed(request, study))


@require_http_methods(["GET", "HEAD"])
def metadata_series(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _metadata(request, _addressed(request, study, series))


@require_http_methods(["GET", "HEAD"])
def metadata_instance(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _metadata(request, _addressed(request, study, series, instance))


# --- Frames, rendered and thumbnails ------------------------------------------------------


def _instance_row(request: HttpRequest, study: str, series: str, instance: str) -> Instance | None:
    client = _client(request)
    if client.studies is None and client.series is None:  # the whole clinic: the quick path
        row = instance_by_uids(
            tenant=client.tenant, study_uid=study, series_uid=series, sop_instance_uid=instance
        )
        if row is not None and row.study.confidential and not client.confidential:
            return None
        return row
    # One row: joined in the one query (sharing saves nothing here, and costs two more).
    row = _addressed(request, study, series, instance)
    return row.select_related("tenant", "study", "series").defer("metadata").first()


def _processed_while_audited(
    request: HttpRequest, row: Instance, process: Callable[[bytes], T], detail: dict[str, Any]
) -> T:
    """`process` run on the instance's verified plaintext while the read is audited.

    The read is audited as it starts, as a WADO-RS read is, so the audit append (a
    commit, waiting on the database) overlaps the reading, decrypting and rendering
    (on a reader thread); nothing is answered before both are done. A failed integrity
    check is audited too, as its own event, and raised.
    """
    job = instance_process_start(instance=row, process=process)
    try:
        _audit_read(request, [row.series], detail, rows=[row])
    except BaseException:
        job.cancel()
        raise
    return instance_process_result(instance=row, actor=_actor(request), future=job)


_UNSERVED = {NoSuchFrame: "no_such_frame", NoSuchAttribute: "no_such_attribute"}
_UNSERVED_406 = {FramesTooLarge: "too_large"}


def _unserved(
    request: HttpRequest, row: Instance, error: RenderError, detail: dict[str, Any]
) -> HttpResponse:
    # The read was audited as it started; nothing is sent, and the log says so too.
    reason = _UNSERVED.get(type(error))
    client = _client(request)
    pixel_read_unserved_audit(
        tenant=client.tenant,
        actor=client.actor,
        instance=row,
        detail={**detail, "reason": reason or _UNSERVED_406.get(type(error), "not_decodable")},
    )
    return dicomweb_error(406 if reason is None else 404, str(error))


def _no_such_frame(row: Instance, numbers: list[int]) -> HttpResponse | None:
    # Checked from the row before the read is audited: asking for a frame that is not
    # there reads nothing. An instance without pixel data (a report, a plan) has none;
    # rows stored before the portal recorded which pixel data an object holds are
    # found out when the object is read.
    if row.pixel_tag == "":
        return dicomweb_error(404, "The instance has no pixel data.")
    try:
        for number in numbers:
            frame_number_check(number, frames=row.number_of_frames)
    except RenderError as exc:
        return dicomweb_error(404, str(exc))
    return None


def _frame_numbers(text: str) -> list[int]:
    # Commas, or spaces (%20) as earlier editions of PS3.18 had it and clients still send.
    try:
        numbers = [int(item) for item in re.split(r"[,\s]", text) if item]
    except ValueError:
        raise QueryError("Frame numbers must be a comma-separated list of integers.") from None
    if not numbers or any(n < 1 for n in numbers):
        raise QueryError("Frame numbers start at 1.")
    # Each frame once: with the frame count checked from the row, a request's size is
    # then bounded by the instance's, however long its list.
    if len(set(numbers)) != len(numbers):
        raise QueryError("Each frame number may appear once in the list.")
    return numbers


def _pixel_content_type(form: PixelForm, boundary: str) -> str:
    if form.single:
        return form.part_content_type
    return f'multipart/related; type="{form.media_type}"; boundary={boundary}'


def _pixel_response(payloads: list[bytes], *, form: PixelForm) -> HttpResponse:
    if form.single:
        (payload,) = payloads
        response = HttpResponse(payload, content_type=_pixel_content_type(form, ""))
    else:
        # Streamed: joining the parts would hold every frame twice.
        boundary, body = related_stream((form.part_content_type, iter([p])) for p in payloads)
        response = StreamingHttpResponse(body, content_type=_pixel_content_type(form, boundary))
        response["Content-Length"] = related_length(
            boundary, ((form.part_content_type, len(p)) for p in payloads)
        )
    patch_vary_headers(response, ["Accept"])  # the form sent follows it
    return response


def _head_of_read(
    request: HttpRequest, row: Instance, detail: dict[str, Any], content_type: str
) -> HttpResponse:
    _audit_read(request, [row.series], detail, rows=[row])
    return _headers_only(content_type)


@require_http_methods(["GET", "HEAD"])
def frames(
    request: HttpRequest, study: str, series: str, instance: str, numbers: str
) -> HttpResponse:
    """Frames decoded to native pixels, or as stored to a client asking for their
    compressed media type (imaging.dicomweb.pixels)."""
    try:
        wanted = _frame_numbers(numbers)
    except QueryError as exc:
        return dicomweb_error(400, str(exc))
    offers = pixel_offers(_accept(request))
    if not any_pixel_form(offers, parts=len(wanted)):
        return dicomweb_error(
            406,
            f'Frames are offered as multipart/related; type="{OCTET_STREAM}" (one frame also '
            f"as {OCTET_STREAM}), and frames stored compressed also in their compressed "
            'media type (multipart/related; type="image/jpeg", "image/jls", "image/jp2", '
            '"image/jpx", "image/jphc" or "image/dicom-rle").',
        )
    row = _instance_row(request, study, series, instance)
    if row is None:
        return dicomweb_error(404, "Not found.")
    # A de-identified share gets decoded pixels only: a bitstream can carry text the
    # de-identification never sees (JPEG comment and APPn segments, JPEG 2000 comments).
    stored = None if _client(request).pseudonym is not None else row.transfer_syntax_uid
    form = pixel_form(offers, parts=len(wanted), stored=stored)
    if form is None:
        return dicomweb_error(406, not_offered_message(stored=stored, parts=len(wanted)))
    if (missing := _no_such_frame(row, wanted)) is not None:
        return missing
    detail: dict[str, Any] = {"frames": len(wanted)}
    if form.compressed:
        detail["as_stored"] = True
        process = partial(stored_frames, numbers=wanted, transfer_syntax=form.transfer_syntax)
    else:
        process = partial(
            frames_native_bytes,
            layout=row.pixel_layout,
            numbers=wanted,
            max_bytes=MAX_DECODED_BYTES,
        )
    if request.method == "HEAD":
        return _head_of_read(request, row, detail, _pixel_content_type(form, new_boundary()))
    try:
        payloads = _processed_while_audited(request, row, process, detail)
    except RenderError as exc:
        return _unserved(request, row, exc, detail)
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    return _pixel_response(payloads, form=form)


def _bulk_value(data: bytes, *, path: str, pseudonym: str | None) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    if pseudonym is not None:
        deidentify(ds, pseudonym=pseudonym)
    try:
        return bulk_data_bytes(ds, path=path)
    except RenderError:
        raise
    except Exception as exc:  # odd stored values fail deep in numpy or pydicom
        raise RenderError(f"The value could not be read ({type(exc).__name__}).") from None


@require_http_methods(["GET", "HEAD"])
def bulkdata(
    request: HttpRequest, study: str, series: str, instance: str, path: str
) -> HttpResponse:
    """A value metadata gave as a BulkDataURI, uncompressed and little endian."""
    form = pixel_form(pixel_offers(_accept(request)), parts=1, stored=None)
    if form is None:
        return dicomweb_error(
            406,
            "Bulk data is offered as application/octet-stream or multipart/related; "
            'type="application/octet-stream".',
        )
    if not bulk_path_valid(path):
        return dicomweb_error(400, "A bulk data path is a tag, then item numbers and tags.")
    row = _instance_row(request, study, series, instance)
    if row is None:
        return dicomweb_error(404, "Not found.")
    detail = {"bulkdata": path.upper()}
    if request.method == "HEAD":
        return _head_of_read(request, row, detail, _pixel_content_type(form, new_boundary()))
    process = partial(_bulk_value, path=path, pseudonym=_client(request).pseudonym)
    try:
        value = _processed_while_audited(request, row, process, detail)
    except RenderError as exc:
        return _unserved(request, row, exc, detail)
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    return _pixel_response([value], form=form)


def _render_options(request: HttpRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    try:
        if "window" in request.GET:
            # PS3.18 8.3.5.1.4: center,width[,function]; only LINEAR is drawn here.
            parts = request.GET["window"].split(",")
            centre, width = float(parts[0]), float(parts[1])
            if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
                raise ValueError
            if len(parts) > 3 or (len(parts) == 3 and parts[2].strip().lower() != "linear"):
                raise ValueError
            options["window"] = (centre, width)
        if "viewport" in request.GET:
            width, height = (int(v) for v in request.GET["viewport"].split(",")[:2])
            if not (0 < width <= 4096 and 0 < height <= 4096):
                raise ValueError
            options["viewport"] = (width, height)
        if "quality" in request.GET:
            options["quality"] = int(request.GET["quality"])
            if not 1 <= options["quality"] <= 100:
                raise ValueError
    except (ValueError, IndexError):
        raise QueryError(
            "window=center,width[,linear] (finite numbers, width > 0), "
            "viewport=width,height (1-4096) and quality=1-100 are the accepted "
            "rendering parameters."
        ) from None
    return options


@require_http_methods(["GET", "HEAD"])
def rendered_instance(
    request: HttpRequest, study: str, series: str, instance: str, number: str = "1"
) -> HttpResponse:
    return _rendered(request, (study, series, instance), number, detail={"rendered": 1})


# A thumbnail of an instance or frame fits in this, unless `viewport` asks otherwise.
THUMBNAIL_VIEWPORT = (128, 128)


@require_http_methods(["GET", "HEAD"])
def instance_thumbnail(
    request: HttpRequest, study: str, series: str, instance: str, number: str = "1"
) -> HttpResponse:
    """PS3.18 10.4.1.1 thumbnail of an instance or a frame: rendered as small.

    Viewers (OHIF) ask for one per series from the instance they will show first.
    """
    return _rendered(
        request,
        (study, series, instance),
        number,
        detail={"thumbnail": 1},
        viewport=THUMBNAIL_VIEWPORT,
    )


def _rendered(
    request: HttpRequest,
    uids: tuple[str, str, str],
    number: str,
    *,
    detail: dict[str, Any],
    viewport: tuple[int, int] | None = None,
) -> HttpResponse:
    try:
        options = _render_options(request)
        numbers = _frame_numbers(number)
    except QueryError as exc:
        return dicomweb_error(400, str(exc))
    if len(numbers) > 1:
        # JPEG and PNG hold one image; the multi-frame types (GIF, video) are not offered.
        return dicomweb_error(
            400, "A rendered frame list names one frame here: ask for each frame on its own."
        )
    (frame,) = numbers
    options["media_type"] = _negotiated(request, RENDERED_TYPES)
    if options["media_type"] is None:
        return dicomweb_error(406, RENDERED_NOT_OFFERED)
    if viewport is not None:
        options.setdefault("viewport", viewport)
    row = _instance_row(request, *uids)
    if row is None:
        return dicomweb_error(404, "Not found.")
    if (missing := _no_such_frame(row, [frame])) is not None:
        return missing
    if request.method == "HEAD":
        return _head_of_read(request, row, detail, options["media_type"])
    try:
        image = _processed_while_audited(
            request,
            row,
            partial(rendered_file, layout=row.pixel_layout, number=frame, **options),
            detail,
        )
    except RenderError as exc:
        return _unserved(request, row, exc, detail)
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    response = HttpResponse(image, content_type=options["media_type"])
    patch_vary_headers(response, ["Accept"])
    return response


@require_http_methods(["GET", "HEAD"])
def thumbnail(request: HttpRequest, study: str, series: str | None = None) -> HttpResponse:
    media_type = _negotiated(request, THUMBNAIL_TYPES)
    if media_type is None:
        return dicomweb_error(406, THUMBNAIL_NOT_OFFERED)
    queryset = _series(request).filter(study__study_uid=study)
    if series is not None:
        queryset = queryset.filter(series_uid=series)
    row = queryset.exclude(thumbnail_key="").first()
    if row is None:
        exists = queryset.exists()
        return dicomweb_error(404, "No thumbnail yet." if exists else "Not found.")
    if request.method == "HEAD":
        _audit_read(request, [row], {"thumbnail": 1})
        return _headers_only(media_type)
    try:
        image = thumbnail_bytes(series=row, actor=_actor(request))
    except IntegrityError:
        return dicomweb_error(500, "A stored object failed its integrity check; it was not served.")
    if media_type == "image/jpeg":
        image = _jpeg_from_png(image)
    _audit_read(request, [row], {"thumbnail": 1})
    response = HttpResponse(image, content_type=media_type)
    patch_vary_headers(response, ["Accept"])
    return response


def _jpeg_from_png(png: bytes) -> bytes:
    # A stored thumbnail is a small PNG of grey or RGB pixels the server rendered itself
    # (imaging.render.thumbnail_png), read back verified.
    image = Image.open(io.BytesIO(png))
    out = io.BytesIO()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
        out, format="JPEG", quality=90
    )
    return out.getvalue()


# --- STOW-RS --------------------------------------------------------------------------


def _sop_ref(sop_class: str, sop_instance: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    elif sop_instance:
        # An item names both (PS3.18 Table 10.5.3-2); a file without a class UID says
        # which instance it was, and the class is given as unknown (no value).
        item["00081150"] = {"vr": "UI"}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _uids(data: bytes) -> tuple[str, str, str]:
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        return (
            str(ds.get("SOPClassUID", "")),
            str(ds.get("SOPInstanceUID", "")),
            str(ds.get("StudyInstanceUID", "")),
        )
    except Exception:
        return "", "", ""


def _failure(sop_class: str, sop_instance: str, reason: int) -> dict[str, Any]:
    return {**_sop_ref(sop_class, sop_instance), "00081197": {"vr": "US", "Value": [reason]}}


def _store_batch(
    request: HttpRequest, *, base: str, study: str | None, payloads: list[bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str], list[str]]:
    """Store received parts together; their referenced and failed SOP items, the
    studies stored into, and why each failed part failed."""
    results = ingest_many(
        tenant=_client(request).tenant,
        actor=_actor(request),
        items=[("stow", payload) for payload in payloads],
        study_uid=study,
    )
    referenced, failed, studies, problems = [], [], set(), []
    for result, payload in zip(results, payloads, strict=True):
        if result.outcome == IngestOutcome.REJECTED:
            problems.append(STOW_TEXT_BY_CODE.get(result.code, result.message))
            reason = {
                "conflict": FAILURE_DUPLICATE_CONFLICT,
                "busy": FAILURE_PROCESSING,
                "store_failed": FAILURE_PROCESSING,
                "study_mismatch": FAILURE_STUDY_MISMATCH,
                "unknown_transfer_syntax": FAILURE_TRANSFER_SYNTAX,
            }.get(result.code, FAILURE_CANNOT_UNDERSTAND)
            sop_class, sop_instance, _ = _uids(payload)
            failed.append(_failure(sop_class, sop_instance, reason))
            continue
        studies.add(result.study_uid)
        item = {
            **_sop_ref(result.sop_class_uid, result.sop_instance_uid),
            "00081190": {
                "vr": "UR",
                "Value": [
                    f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                    f"/instances/{result.sop_instance_uid}"
                ],
            },
        }
        if result.corrected:  # what is stored differs from what was sent (PS3.18 10.5.3)
            item["00081196"] = {"vr": "US", "Value": [WARNING_COERCION]}
        referenced.append(item)
    return referenced, failed, studies, problems


def _store_batch_or_fail(
    request: HttpRequest, *, base: str, study: str | None, payloads: list[bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str], list[str]]:
    """`_store_batch`, or each part failed (0x0110) if storing raised.

    Batches before this one are committed and the response must say so: a 500 would
    tell the client nothing about them. The failed batch left nothing behind (its
    transaction rolled back, its objects removed); a part the one-file-at-a-time path
    had already committed is stored, and sending it again counts as stored.
    """
    try:
        return _store_batch(request, base=base, study=study, payloads=payloads)
    except Exception as exc:
        # The type only: a database error's text can quote the row's values (a PatientID).
        logger.error(
            "STOW-RS batch failed for tenant %s: %s", _client(request).tenant.pk, type(exc).__name__
        )
        failed = [_failure(*_uids(payload)[:2], FAILURE_PROCESSING) for payload in payloads]
        return [], failed, set(), [STORE_FAILED_TEXT] * len(payloads)


def _retrieve_url(base: str, study: str | None, stored: set[str]) -> dict[str, Any]:
    # Type 2 (PS3.18 Table I.1-1): the study stored into when there is one, else empty.
    if study is None and len(stored) == 1:
        study = next(iter(stored))
    return {"vr": "UR", "Value": [f"{base}/studies/{study}"]} if study else {"vr": "UR"}


def store(request: HttpRequest, study: str | None = None) -> HttpResponse:
    if not _client(request).may_store:
        return dicomweb_error(405, "This DICOMweb root is read-only.", Allow="GET, HEAD")
    if _negotiated(request, JSON_TYPES) is None:  # refused before anything is stored
        return dicomweb_error(406, STORE_NOT_OFFERED)
    content_type = request.headers.get("Content-Type", "")
    media, params = content_type_parameters(content_type)
    root_type = params.get("type", "").strip('"').lower()
    if media != "multipart/related" or root_type not in ("application/dicom", METADATA_TYPE):
        return dicomweb_error(
            415,
            'Send multipart/related; type="application/dicom" with one DICOM file per part, '
            f'or type="{METADATA_TYPE}" with DICOM JSON metadata and then its bulk data.',
        )
    if study is not None and not valid_uid(study):
        return dicomweb_error(400, "The study in the URL is not a valid UID.")
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return dicomweb_error(415, "Send the body without a Content-Encoding (identity).")
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return dicomweb_error(400, "Content-Length is not a number.")
    if declared > settings.STOW_MAX_REQUEST_BYTES:
        return dicomweb_error(413, "The request is larger than this server accepts.")
    read = request.read
    if not declared and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # dicomweb-client and others stream large uploads chunked. Django reads only
        # Content-Length bytes, so read the server's de-chunked input directly, bounded.
        if not request.META.get("wsgi.input_terminated"):
            return dicomweb_error(411, "Send a Content-Length with the request.")
        read = limited_reader(
            request.META["wsgi.input"].read, limit=settings.STOW_MAX_REQUEST_BYTES
        )
    base = _base_url(request)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    # Failures naming no instance, by reason: a request of many stray parts is a count,
    # not a list as long as the request.
    others: Counter[int] = Counter()
    # Why parts failed, by text: the partner reads them in the Warning header field.
    # `logged` holds this view's own texts; ingest logs its rejections by code.
    problems: Counter[str] = Counter()
    logged: Counter[str] = Counter()

    def problem(text: str) -> None:
        problems[text] += 1
        logged[text] += 1

    studies: set[str] = set()
    pending: list[bytes] = []

    def fail(item: dict[str, Any]) -> None:
        if "00081155" in item:
            failed.append(item)
        else:
            others[item["00081197"]["Value"][0]] += 1

    def flush() -> None:
        if pending:
            stored, refused, into, why = _store_batch_or_fail(
                request, base=base, study=study, payloads=pending
            )
            referenced.extend(stored)
            for item in refused:
                fail(item)
            studies.update(into)
            problems.update(why)
            pending.clear()

    def take(payload: bytes) -> None:
        pending.append(payload)
        if (
            len(pending) >= settings.STOW_BATCH_INSTANCES
            or sum(map(len, pending)) >= settings.STOW_BATCH_BYTES
        ):
            flush()

    def take_rebuilt(rebuilt: Iterable[Rebuilt]) -> None:
        try:
            for item in rebuilt:
                if item.data is not None:
                    take(item.data)
                    continue
                problem(item.problem)
                reason = FAILURE_PROCESSING if item.too_large else FAILURE_CANNOT_UNDERSTAND
                fail(_failure(item.sop_class, item.sop_instance, reason))
        except Exception as exc:
            # A part this code did not foresee: it fails, and the instances stored before
            # it stay in the answer. The type only: a message could quote a value.
            logger.error(
                "STOW-RS metadata part failed for tenant %s: %s",
                _client(request).tenant.pk,
                type(exc).__name__,
            )
            problem(UNFORESEEN_PART_TEXT)
            fail(_failure("", "", FAILURE_CANNOT_UNDERSTAND))

    # Metadata and bulk data (PS3.18 10.5.1.2): each instance rebuilt once complete.
    rebuilder = (
        JsonStow(
            max_held_bytes=settings.STOW_JSON_MAX_HELD_BYTES,
            max_metadata_bytes=settings.STOW_JSON_MAX_METADATA_BYTES,
            max_rebuilt_bytes=settings.STOW_MAX_REQUEST_BYTES,
        )
        if root_type == METADATA_TYPE
        else None
    )
    parts = iter_related_parts(
        read, content_type, max_part_bytes=settings.INGEST_MAX_INSTANCE_BYTES
    )
    try:
        # Parts are stored in batches of a few as they arrive (one transaction each), so
        # memory holds at most one batch and a large request is not one huge transaction.
        for part in parts:
            if rebuilder is not None and part.type != "application/dicom":
                take_rebuilt(rebuilder.part(part))
            elif isinstance(part.payload, PartTooLarge):
                problem(PART_TOO_LARGE_TEXT)
                fail(_failure("", "", FAILURE_PROCESSING))
            elif part.type != "application/dicom":
                problem(NOT_DICOM_PART_TEXT)
                sop_class, sop_instance, _ = _uids(part.payload)
                fail(_failure(sop_class, sop_instance, FAILURE_CANNOT_UNDERSTAND))
            else:
                take(part.payload)
        if rebuilder is not None:
            take_rebuilt(rebuilder.finish())
        flush()
    except (MultipartError, OSError) as exc:  # OSError: the body could not be read
        if rebuilder is not None:
            take_rebuilt(rebuilder.finish())  # each instance still waiting fails by name
        flush()  # what arrived whole before the error is kept, as the response says
        if not referenced and not failed and not others:
            if isinstance(exc, OSError):
                return dicomweb_error(400, "The request body could not be read to its end.")
            return dicomweb_error(413 if isinstance(exc, BodyTooLarge) else 400, str(exc))
        problem(BODY_CUT_TEXT)
        fail(_failure("", "", FAILURE_CANNOT_UNDERSTAND))
    for text, count in logged.items():  # no PHI: the texts are this code's own
        logger.info(
            "STOW-RS: %s instance(s) or part(s) not stored for tenant %s: %s",
            count,
            _client(request).tenant.pk,
            text,
        )
    # Failures of no instance (a part that is not DICOM, too large to read, a body cut
    # short) go in the Other Failures Sequence, one item per reason: a Failed SOP item
    # names its instance.
    body: dict[str, Any] = {"00081190": _retrieve_url(base, study, studies)}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if others:
        body["0008119A"] = {
            "vr": "SQ",
            "Value": [{"00081197": {"vr": "US", "Value": [reason]}} for reason in sorted(others)],
        }
    failures = len(failed) + sum(others.values())
    _audit(request, Action.DICOMWEB_STORE, {"stored": len(referenced), "failed": failures})
    warned = any("00081196" in item for item in referenced)
    status = 409 if failures and not referenced else 202 if failures or warned else 200
    response = _json(body, status=status)
    if problems:
        response["Warning"] = _warnings(request, problems)
    return response


def _warnings(request: HttpRequest, problems: Counter[str]) -> str:
    """The Warning header field (PS3.18 8.4; RFC 9111 5.5's form) saying why parts
    failed, most frequent first: the Failed SOP Sequence has a code, not a reason.

    The texts are this code's own (the ones web uploads show), never a value sent.
    """
    agent = request.get_host()
    fields = []
    for text, count in problems.most_common(MAX_WARNINGS):
        text = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in text)
        fields.append(f'299 {agent} "{text} ({count} part{"s" if count != 1 else ""})"')
    if len(problems) > MAX_WARNINGS:
        fields.append(f'299 {agent} "{len(problems) - MAX_WARNINGS} other reasons not listed"')
    return ", ".join(fields)


@require_http_methods(["GET", "HEAD", "POST"])
def study(request: HttpRequest, study: str) -> HttpResponse:
    if request.method == "POST":
        return store(request, study=study)
    return retrieve_study(request, study=study)
