"""WADO-RS frames and bulk data, rendered images and thumbnails (PS3.18 10.4)."""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pydicom
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods
from PIL import Image

from imaging.crypto import IntegrityError
from imaging.deidentify import deidentify
from imaging.dicomweb.auth import dicomweb_error
from imaging.dicomweb.bulkdata import (
    MAX_DECODED_BYTES,
    NoSuchAttribute,
    bulk_data_bytes,
    bulk_path_valid,
    stored_frames,
)
from imaging.dicomweb.multipart import new_boundary, related_length, related_stream
from imaging.dicomweb.pixels import (
    OCTET_STREAM,
    PixelForm,
    any_pixel_form,
    not_offered_message,
    pixel_form,
    pixel_offers,
)
from imaging.dicomweb.query import QueryError
from imaging.dicomweb.search import level_queryset
from imaging.dicomweb.views.common import (
    INTEGRITY_FAILED_TEXT,
    accept_of,
    actor_of,
    addressed,
    audit_read,
    client_of,
    headers_only,
    negotiated,
)
from imaging.models import Instance, Series
from imaging.render import (
    FramesTooLarge,
    NoSuchFrame,
    RenderError,
    Viewport,
    frame_number_check,
    frames_native_bytes,
    rendered_file,
)
from imaging.selectors import instance_by_uids
from imaging.services import instance_process_result, instance_process_start, thumbnail_bytes
from imaging.viewing import pixel_read_unserved_audit

T = TypeVar("T")

logger = logging.getLogger(__name__)

# What imaging.render encodes: image/gif, image/jp2 and video are not offered.
RENDERED_TYPES = ("image/jpeg", "image/png")
RENDERED_NOT_OFFERED = "Rendered images are offered as image/jpeg (the default) or image/png."

# Thumbnails are stored as PNG: sent as stored unless JPEG is preferred (PS3.18
# 10.4.3.3.4 leaves a thumbnail's representation to the origin server).
THUMBNAIL_TYPES = ("image/png", "image/jpeg")
THUMBNAIL_NOT_OFFERED = "Thumbnails are offered as image/png (the default) or image/jpeg."


def _series(request: HttpRequest) -> QuerySet[Series]:
    client = client_of(request)
    series = level_queryset(
        "series",
        tenant=client.tenant,
        studies=client.studies,
        series=client.series,
        confidential=client.confidential,
    )
    return series.select_related("tenant", "study", "study__patient")


def _instance_row(request: HttpRequest, study: str, series: str, instance: str) -> Instance | None:
    client = client_of(request)
    if client.studies is None and client.series is None:  # the whole clinic: the quick path
        row = instance_by_uids(
            tenant=client.tenant, study_uid=study, series_uid=series, sop_instance_uid=instance
        )
        if row is not None and row.study.confidential and not client.confidential:
            return None
        return row
    # One row: joined in the one query (sharing saves nothing here, and costs two more).
    row = addressed(request, study, series, instance)
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
    job = instance_process_start(instance=row, process=_guarded(process, row))
    try:
        audit_read(request, [row.series], detail, rows=[row])
    except BaseException:
        job.cancel()
        raise
    return instance_process_result(instance=row, actor=actor_of(request), future=job)


def _guarded(process: Callable[[bytes], T], row: Instance) -> Callable[[bytes], T]:
    """`process`, with what pydicom or numpy raise on odd stored values, in their many
    shapes, turned into a RenderError: a specific answer and a "not served" audit event,
    not a server error. Only the exception's type is logged: its text can quote values."""

    def run(data: bytes) -> T:
        try:
            return process(data)
        except (RenderError, IntegrityError):
            raise
        except Exception as exc:
            logger.warning("instance %s could not be processed (%s)", row.pk, type(exc).__name__)
            raise RenderError(
                f"The stored object could not be read ({type(exc).__name__})."
            ) from None

    return run


_UNSERVED = {NoSuchFrame: "no_such_frame", NoSuchAttribute: "no_such_attribute"}
_UNSERVED_406 = {FramesTooLarge: "too_large"}


def _unserved(
    request: HttpRequest, row: Instance, error: RenderError, detail: dict[str, Any]
) -> HttpResponse:
    # The read was audited as it started; nothing is sent, and the log says so too.
    reason = _UNSERVED.get(type(error))
    client = client_of(request)
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
        items = [item for item in re.split(r"[,\s]", text) if item]
        if not all(re.fullmatch(r"[0-9]+", item) for item in items):
            raise ValueError  # int() takes "1_0", "+3" and other scripts' digits
        numbers = [int(item) for item in items]
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
    audit_read(request, [row.series], detail, rows=[row])
    return headers_only(content_type)


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
    offers = pixel_offers(accept_of(request))
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
    stored = None if client_of(request).pseudonym is not None else row.transfer_syntax_uid
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
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
    return _pixel_response(payloads, form=form)


def _bulk_value(data: bytes, *, path: str, pseudonym: str | None) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    if pseudonym is not None:
        deidentify(ds, pseudonym=pseudonym)
    return bulk_data_bytes(ds, path=path)


@require_http_methods(["GET", "HEAD"])
def bulkdata(
    request: HttpRequest, study: str, series: str, instance: str, path: str
) -> HttpResponse:
    """A value metadata gave as a BulkDataURI, uncompressed and little endian."""
    form = pixel_form(pixel_offers(accept_of(request)), parts=1, stored=None)
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
    process = partial(_bulk_value, path=path, pseudonym=client_of(request).pseudonym)
    try:
        value = _processed_while_audited(request, row, process, detail)
    except RenderError as exc:
        return _unserved(request, row, exc, detail)
    except IntegrityError:
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
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
            options["viewport"] = _viewport(request.GET["viewport"])
        if "quality" in request.GET:
            options["quality"] = int(request.GET["quality"])
            if not 1 <= options["quality"] <= 100:
                raise ValueError
    except (ValueError, IndexError):
        raise QueryError(
            "window=center,width[,linear] (finite numbers, width > 0), "
            "viewport=width,height[,sx,sy,sw,sh] (width and height 1-4096; the source "
            "region in whole pixels, sw or sh negative to flip, left out for the rest of "
            "the image) and quality=1-100 are the accepted rendering parameters."
        ) from None
    return options


@require_http_methods(["GET", "HEAD"])
def rendered_instance(
    request: HttpRequest, study: str, series: str, instance: str, number: str = "1"
) -> HttpResponse:
    return _rendered(request, (study, series, instance), number, detail={"rendered": 1})


def _viewport(text: str) -> Viewport:
    parts = text.split(",")
    if len(parts) not in (2, 6) or not all(re.fullmatch(r"-?[0-9]*", p.strip()) for p in parts):
        raise ValueError
    width, height = int(parts[0]), int(parts[1])
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise ValueError
    if len(parts) == 2:
        return Viewport(width, height)
    x, y = (int(p) if p.strip() else 0 for p in parts[2:4])
    sw, sh = (int(p) if p.strip() else None for p in parts[4:6])
    if x < 0 or y < 0 or sw == 0 or sh == 0:
        raise ValueError
    return Viewport(width, height, region=(x, y, sw, sh))


# A thumbnail of an instance or frame fits in this, unless `viewport` asks otherwise.
THUMBNAIL_VIEWPORT = Viewport(128, 128, enlarge=False)


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
    viewport: Viewport | None = None,
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
    options["media_type"] = negotiated(request, RENDERED_TYPES)
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
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
    response = HttpResponse(image, content_type=options["media_type"])
    patch_vary_headers(response, ["Accept"])
    return response


@require_http_methods(["GET", "HEAD"])
def thumbnail(request: HttpRequest, study: str, series: str | None = None) -> HttpResponse:
    media_type = negotiated(request, THUMBNAIL_TYPES)
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
        audit_read(request, [row], {"thumbnail": 1})
        return headers_only(media_type)
    try:
        image = thumbnail_bytes(series=row, actor=actor_of(request))
    except IntegrityError:
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
    if media_type == "image/jpeg":
        image = _jpeg_from_png(image)
    audit_read(request, [row], {"thumbnail": 1})
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
