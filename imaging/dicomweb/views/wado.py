"""WADO-RS (PS3.18 10.4): instances as stored or transcoded, and their metadata."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pydicom
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods
from pydicom.filewriter import dcmwrite

from imaging.crypto import IntegrityError
from imaging.deidentify import DeidentifyRefused, deidentified_bytes, deidentify
from imaging.dicom import FLOAT_PIXEL_VRS, PIXEL_DATA, metadata_dict
from imaging.dicomweb.auth import dicomweb_error
from imaging.dicomweb.bulkdata import (
    MAX_DECODED_BYTES,
    WORDS,
    decoded_size,
    little_endian,
    stored_pixel_bytes,
)
from imaging.dicomweb.multipart import accept_range, related_length, related_stream
from imaging.dicomweb.pixels import EXPLICIT_VR_LE
from imaging.dicomweb.views.common import (
    DICOM_JSON,
    INTEGRITY_FAILED_TEXT,
    JSON_TYPES,
    accept_of,
    actor_of,
    addressed,
    audit_read,
    base_url,
    client_of,
    headers_only,
    negotiated,
)
from imaging.metadata import metadata_for_instance, metadata_item
from imaging.models import Instance
from imaging.selectors import instances_for_reading
from imaging.services import (
    instance_bytes,
    instance_header_json,
    instance_study_key,
    instances_chunks,
)
from imaging.viewing import pixel_read_unserved_audit

logger = logging.getLogger(__name__)

EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"


class NotAcceptable(Exception):
    pass


METADATA_NOT_OFFERED = (
    f"Metadata is offered as {DICOM_JSON} (the default) or application/json; DICOM XML "
    '(multipart/related; type="application/dicom+xml") is not offered.'
)


def _requested_transfer_syntaxes(request: HttpRequest) -> list[str]:
    """The transfer syntaxes asked for, most preferred first: '*' (as stored) or UIDs.

    Every entry of the Accept header counts, by its q (RFC 9110 12.5.1): clients such
    as dicomweb-client list a specific syntax, then `transfer-syntax=*` as a fallback.
    """
    accept = accept_of(request) or "*/*"
    offers: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, params = accept_range(item)
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


def _cut_short(request: HttpRequest, row: Instance, detail: dict[str, Any]) -> RetrieveCutShort:
    """Audit that `row` was not sent, its answer already under way (the read was audited
    as it started), and the exception that ends the body without its closing part."""
    _unserved_audit(request, row, {**detail, "cut_short": True})
    return RetrieveCutShort(str(row.pk))


def _unserved_audit(request: HttpRequest, row: Instance, detail: dict[str, Any]) -> None:
    """Audit that `row` was decrypted for this request but not sent."""
    client = client_of(request)
    pixel_read_unserved_audit(tenant=client.tenant, actor=client.actor, instance=row, detail=detail)


class HeaderUnreadable(Exception):
    """A stored object's header could not be parsed for its metadata (logged)."""

    def __init__(self, row: Instance) -> None:
        super().__init__(str(row.pk))
        self.row = row


class NotPrepared(Exception):
    """A stored object could not be re-encoded or de-identified; says which, and only the
    type of what failed (its text can quote the values)."""

    def __init__(self, row: Instance, error: Exception) -> None:
        super().__init__(f"instance {row.pk} could not be prepared ({type(error).__name__})")
        self.row = row


HEADER_UNREADABLE_TEXT = "A stored instance's header could not be read; it was not served."


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


def _read(
    request: HttpRequest, instances: QuerySet[Instance], *, headers: bool = False
) -> list[Instance]:
    return instances_for_reading(
        tenant=client_of(request).tenant, instances=instances, headers=headers
    )


def _retrieve(request: HttpRequest, instances: QuerySet[Instance]) -> HttpResponse:
    try:
        wanted = _requested_transfer_syntaxes(request)
    except NotAcceptable as exc:
        return dicomweb_error(406, str(exc))
    rows = _read(request, instances)
    if not rows:
        return dicomweb_error(404, "Not found.")
    actor = actor_of(request)
    pseudonym = client_of(request).pseudonym
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
        try:
            if row.pk.hex in transcoded:
                data = _transcode(data, EXPLICIT_VR_LE)
            if pseudonym is not None:
                data = deidentified_bytes(data, pseudonym=pseudonym)
        except (NotAcceptable, DeidentifyRefused):
            raise
        except Exception as exc:  # pydicom fails on odd stored headers in many shapes
            raise NotPrepared(row, exc) from None
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
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
    except NotPrepared as exc:
        # Decrypted but not sent, before the answer started: the log says which.
        logger.warning("retrieve refused: %s", exc)
        _unserved_audit(request, exc.row, {"instances": 1, "reason": "not_decodable"})
        return dicomweb_error(
            406,
            f"An instance ({exc.row.sop_instance_uid}) holds values that could not be "
            + (
                "re-encoded; ask for transfer-syntax=* to receive it as stored."
                if pseudonym is None
                else "de-identified, so it was not sent; ask the clinic for it."
            ),
        )
    later = {r.pk.hex for r in to_prepare} - prepared.keys()

    def content_type(row: Instance) -> str:
        return f"application/dicom; transfer-syntax={syntaxes[row.pk.hex]}"

    def prepared_late(row: Instance) -> bytes:
        try:
            return prepare(row)
        except IntegrityError:
            raise  # audited where it was found, and it cuts the body short too
        except Exception as exc:  # NotPrepared, or refused as the first ones were not
            # The answer has started: end it without its closing delimiter, so the
            # client sees it cut short rather than a whole answer missing an object.
            # The read was audited as it started; the log says this one was not sent.
            cause = exc if isinstance(exc, NotPrepared) else NotPrepared(row, exc)
            logger.warning("retrieve cut short: %s", cause)
            raise _cut_short(request, row, {"instances": 1, "reason": "not_decodable"}) from None

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

    audit_read(request, [r.series for r in rows], {"instances": len(rows)}, rows=rows)
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
    return _retrieve(request, addressed(request, study))


@require_http_methods(["GET", "HEAD"])
def retrieve_series(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _retrieve(request, addressed(request, study, series))


@require_http_methods(["GET", "HEAD"])
def retrieve_instance(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _retrieve(request, addressed(request, study, series, instance))


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


# Metadata of this many bytes is built before the answer starts, so a failed integrity
# check among them is a 500 and a series' answer goes out whole with its length; past
# it (a study of thousands of instances) the rest is built item by item as it is sent.
METADATA_AHEAD_BYTES = 8 << 20


def _metadata(request: HttpRequest, instances: QuerySet[Instance]) -> HttpResponse:
    media_type = negotiated(request, JSON_TYPES)
    if media_type is None:
        return dicomweb_error(406, METADATA_NOT_OFFERED)
    rows = _read(request, instances, headers=True)
    if not rows:
        return dicomweb_error(404, "Not found.")
    if request.method == "HEAD":
        audit_read(request, [r.series for r in rows], {"metadata": len(rows)}, rows=rows)
        return headers_only(media_type)
    actor = actor_of(request)
    pseudonym = client_of(request).pseudonym
    base = base_url(request)
    keys: dict[Any, bytes] = {}

    def item_of(row: Instance) -> bytes:
        uri = (
            f"{base}/studies/{row.study.study_uid}/series/{row.series.series_uid}"
            f"/instances/{row.sop_instance_uid}"
        )
        pixel = _pixel(row)
        item = None
        if pseudonym is None:
            header = instance_header_json(instance=row, actor=actor, key=keys[row.study_id])
            row.metadata = None  # the sealed header, let go of once opened
            if header:
                item = metadata_for_instance(header, instance_uri=uri, pixel=pixel)
        if item is None:
            # De-identified clients, and rows stored before headers (or bulk data
            # paths) were kept: parse.
            data = instance_bytes(instance=row, actor=actor)  # IntegrityError: audited
            try:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                if pseudonym is not None:
                    deidentify(ds, pseudonym=pseudonym)
                item = metadata_item(metadata_dict(ds), instance_uri=uri, pixel=pixel)
            except Exception as exc:  # pydicom fails on odd stored headers in many shapes
                # Its type only: pydicom's messages can quote the values.
                logger.warning(
                    "metadata: instance %s could not be read (%s)", row.pk, type(exc).__name__
                )
                raise HeaderUnreadable(row) from None
        return item

    items: list[bytes] = []
    held = 0
    try:
        # A study key that cannot be opened fails every instance of the study: say so
        # before the answer starts.
        for row in {r.study_id: r for r in rows}.values():
            keys[row.study_id] = instance_study_key(instance=row, actor=actor)
        for row in rows:
            if held > METADATA_AHEAD_BYTES:
                break
            items.append(item_of(row))
            held += len(items[-1])
    except IntegrityError:
        return dicomweb_error(500, INTEGRITY_FAILED_TEXT)
    except HeaderUnreadable as exc:
        # Decrypted but not sent: the clinic's log says which instance cannot be read.
        _unserved_audit(request, exc.row, {"metadata": 1, "reason": "not_parsable"})
        return dicomweb_error(500, HEADER_UNREADABLE_TEXT)
    audit_read(request, [r.series for r in rows], {"metadata": len(rows)}, rows=rows)
    later = rows[len(items) :]

    def item_late(row: Instance) -> bytes:
        try:
            return item_of(row)
        except HeaderUnreadable:
            raise _cut_short(request, row, {"metadata": 1, "reason": "not_parsable"}) from None

    if not later:
        response = HttpResponse(b"[" + b",".join(items) + b"]", content_type=media_type)
    else:

        def body() -> Iterator[bytes]:
            yield b"[" + b",".join(items)
            items.clear()
            for row in later:
                # An integrity failure here (audited where found) or a header that
                # cannot be read ends the body without its closing bracket: the client
                # sees it cut short, not a whole answer.
                yield b"," + item_late(row)
            yield b"]"

        response = StreamingHttpResponse(body(), content_type=media_type)
    patch_vary_headers(response, ["Accept"])
    return response


@require_http_methods(["GET", "HEAD"])
def metadata_study(request: HttpRequest, study: str) -> HttpResponse:
    return _metadata(request, addressed(request, study))


@require_http_methods(["GET", "HEAD"])
def metadata_series(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _metadata(request, addressed(request, study, series))


@require_http_methods(["GET", "HEAD"])
def metadata_instance(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _metadata(request, addressed(request, study, series, instance))
