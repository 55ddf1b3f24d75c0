"""STOW-RS (PS3.18 10.5): store instances sent as DICOM parts or as metadata and bulk data."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pydicom
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from audit.models import Action
from imaging.dicom import valid_uid
from imaging.dicomweb.auth import dicomweb_error
from imaging.dicomweb.multipart import (
    BodyTooLarge,
    MultipartError,
    PartTooLarge,
    content_type_parameters,
    iter_related_parts,
    limited_reader,
)
from imaging.dicomweb.stow_json import METADATA_TYPE, JsonStow, Rebuilt
from imaging.dicomweb.views.common import (
    DICOM_JSON,
    JSON_TYPES,
    actor_of,
    audit_event,
    base_url,
    client_of,
    negotiated,
)
from imaging.ingest import IngestOutcome, ingest_many

logger = logging.getLogger(__name__)

FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_DUPLICATE_CONFLICT = 0x0111
FAILURE_TRANSFER_SYNTAX = 0xC122  # Referenced Transfer Syntax not supported
FAILURE_SOP_CLASS = 0x0122  # Referenced SOP Class not supported
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
STORE_NOT_OFFERED = (
    f"The store response is offered as {DICOM_JSON} (the default) or application/json; "
    "DICOM XML (application/dicom+xml) is not offered."
)


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
        tenant=client_of(request).tenant,
        actor=actor_of(request),
        items=[("stow", payload) for payload in payloads],
        study_uid=study,
    )
    referenced, failed, studies, problems = [], [], set(), []
    for result, payload in zip(results, payloads, strict=True):
        if result.outcome == IngestOutcome.REJECTED:
            problems.append(STOW_TEXT_BY_CODE.get(result.code, result.message))
            reason = {
                "conflict": FAILURE_DUPLICATE_CONFLICT,
                "dicomdir": FAILURE_SOP_CLASS,
                "busy": FAILURE_PROCESSING,
                "store_failed": FAILURE_PROCESSING,
                "stored_copy_missing": FAILURE_PROCESSING,
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
            "STOW-RS batch failed for tenant %s: %s",
            client_of(request).tenant.pk,
            type(exc).__name__,
        )
        failed = [_failure(*_uids(payload)[:2], FAILURE_PROCESSING) for payload in payloads]
        return [], failed, set(), [STORE_FAILED_TEXT] * len(payloads)


def _retrieve_url(base: str, study: str | None, stored: set[str]) -> dict[str, Any]:
    # Type 2 (PS3.18 Table I.1-1): the study stored into when there is one, else empty.
    if study is None and len(stored) == 1:
        study = next(iter(stored))
    return {"vr": "UR", "Value": [f"{base}/studies/{study}"]} if study else {"vr": "UR"}


def store(request: HttpRequest, study: str | None = None) -> HttpResponse:
    if not client_of(request).may_store:
        return dicomweb_error(405, "This DICOMweb root is read-only.", Allow="GET, HEAD")
    media_type = negotiated(request, JSON_TYPES)
    if media_type is None:  # refused before anything is stored
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
    base = base_url(request)
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
                client_of(request).tenant.pk,
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
            client_of(request).tenant.pk,
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
    audit_event(request, Action.DICOMWEB_STORE, {"stored": len(referenced), "failed": failures})
    warned = any("00081196" in item for item in referenced)
    status = 409 if failures and not referenced else 202 if failures or warned else 200
    response = JsonResponse(body, status=status, content_type=media_type)
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
