"""The one ingest service: web upload, the CLI, STOW-RS and later DIMSE all call it.

An instance is acknowledged only after its encrypted object is written (and fsynced)
and its rows are committed; the object write happens inside the database transaction,
so a failure deletes the object and a crash leaves at most an unreferenced object,
which the orphan sweep removes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache, partial
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

import audit
from audit.actors import Actor
from audit.models import Action, Outcome
from imaging.crypto import IntegrityError as CryptoIntegrityError
from imaging.crypto import ObjectContext, encrypt_stream
from imaging.dicom import DicomRejected, ParsedInstance, dataset_offset, parse_part10
from imaging.keyring import study_dek, study_dek_new, tenant_key_active
from imaging.metadata import metadata_seal
from imaging.models import Instance, Patient, Series, Study
from imaging.services import (
    instance_chunks,
    instance_object_missing,
    instance_study_key,
    series_requests_create,
)
from imaging.storage import (
    object_delete_quietly,
    object_exists,
    object_key_new,
    object_write,
    object_write_many,
    storage_for,
)
from portal.logredact import raised_at
from portal.tasks import task_send_on_commit
from tenants.models import Tenant

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
ZIP_MAGIC = b"PK\x03\x04"


CORRECTED_MESSAGE = (
    "Stored with its file meta information corrected: it named another SOP instance or "
    "class than the data set, which is kept as sent."
)


class IngestOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class IngestResult:
    name: str
    outcome: IngestOutcome
    code: str = ""
    message: str = ""
    instance_id: str = ""
    study_id: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    # File meta elements set to what the data set says (imaging.dicom._meta_corrected).
    corrected: tuple[str, ...] = ()


@dataclass
class IngestSummary:
    results: list[IngestResult]

    def count(self, outcome: IngestOutcome) -> int:
        return sum(1 for result in self.results if result.outcome == outcome)

    @property
    def line(self) -> str:
        return (
            f"stored {self.count(IngestOutcome.STORED)}, "
            f"duplicate {self.count(IngestOutcome.DUPLICATE)}, "
            f"rejected {self.count(IngestOutcome.REJECTED)}"
        )


class _Conflict(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _rejection_audited(*, tenant: Tenant, actor: Actor, detail: dict[str, str]) -> None:
    audit.record(
        actor=actor,
        action=Action.INSTANCE_REJECTED,
        target=None,
        tenant=tenant,
        outcome=Outcome.FAILURE,
        detail=detail,
    )


def _reject(
    *, tenant: Tenant, actor: Actor, name: str, code: str, message: str, sop_uid: str = ""
) -> IngestResult:
    _rejection_audited(tenant=tenant, actor=actor, detail={"code": code})
    logger.info("ingest rejected a file for tenant %s: %s", tenant.pk, code)
    return IngestResult(name=name, outcome=IngestOutcome.REJECTED, code=code, message=message)


def ingest_bytes(*, tenant: Tenant, actor: Actor, data: bytes, name: str) -> IngestResult:
    """Validate, encrypt, store and index one Part 10 file."""
    try:
        parsed = _parse(data)
    except DicomRejected as exc:
        return _reject(tenant=tenant, actor=actor, name=name, code=exc.code, message=exc.message)
    return _ingest_parsed(tenant=tenant, actor=actor, name=name, parsed=parsed)


def _ingest_isolated(*, tenant: Tenant, actor: Actor, data: bytes, name: str) -> IngestResult:
    """`ingest_bytes` for one file of many (an upload, a zip, a folder): a failure to
    store it is its result, and the files after it are still tried."""
    try:
        parsed = _parse(data)
    except DicomRejected as exc:
        return _reject(tenant=tenant, actor=actor, name=name, code=exc.code, message=exc.message)
    return _ingest_one(tenant=tenant, actor=actor, name=name, parsed=parsed)


def _parse(data: bytes, digest: Future[str] | None = None) -> ParsedInstance:
    try:
        return parse_part10(
            data,
            max_bytes=settings.INGEST_MAX_INSTANCE_BYTES,
            max_depth=settings.INGEST_MAX_SEQUENCE_DEPTH,
            max_elements=settings.INGEST_MAX_ELEMENTS,
            digest=digest.result if digest is not None else None,
        )
    except DicomRejected:
        raise
    except Exception as exc:
        # A file no check foresaw is this file's rejection, not the request's failure:
        # the other files of an upload or a STOW-RS batch are still stored.
        logger.warning(
            "ingest: unforeseen parse failure %s at %s", type(exc).__name__, raised_at(exc)
        )
        raise DicomRejected(
            "malformed",
            f"The file could not be parsed as DICOM ({type(exc).__name__}).",
        ) from None


@lru_cache(maxsize=1)
def _hashers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="ingest-hash")


os.register_at_fork(after_in_child=_hashers.cache_clear)  # a forked child has no threads


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ingest_parsed(
    *, tenant: Tenant, actor: Actor, name: str, parsed: ParsedInstance
) -> IngestResult:
    for _attempt in range(3):
        existing = (
            Instance.objects.for_tenant(tenant)
            .filter(sop_instance_uid=parsed.sop_instance_uid)
            .first()
        )
        if existing is not None:
            return _duplicate(
                tenant=tenant, actor=actor, name=name, existing=existing, parsed=parsed
            )
        try:
            return _store(tenant=tenant, actor=actor, name=name, parsed=parsed)
        except IntegrityError as exc:
            if not _is_unique_violation(exc):
                raise
            continue  # a concurrent ingest created the same row; look again
        except _Conflict as exc:
            return _reject(
                tenant=tenant, actor=actor, name=name, code=exc.code, message=exc.message
            )
    return _reject(
        tenant=tenant,
        actor=actor,
        name=name,
        code="busy",
        message="The same study is being stored concurrently; send the file again.",
    )


def _stored(
    name: str,
    parsed: ParsedInstance,
    instance: Instance,
    outcome: IngestOutcome = IngestOutcome.STORED,
    *,
    corrected: bool = True,
) -> IngestResult:
    corrections = parsed.corrected if corrected else ()
    return IngestResult(
        name=name,
        outcome=outcome,
        instance_id=str(instance.pk),
        study_id=str(instance.study_id),
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        corrected=corrections,
        message=CORRECTED_MESSAGE if corrections else "",
    )


def _is_unique_violation(exc: IntegrityError) -> bool:
    text = str(exc).lower()
    return "unique" in text or "duplicate key" in text


def _duplicate(
    *, tenant: Tenant, actor: Actor, name: str, existing: Instance, parsed: ParsedInstance
) -> IngestResult:
    same_file = existing.sha256 == parsed.sha256
    if not object_exists(storage_for(tenant), existing.storage_key):
        # A duplicate's answer tells the sender it may delete its copy: never give it
        # for an instance whose stored object is gone.
        if same_file:
            return _restore(tenant=tenant, actor=actor, name=name, existing=existing, parsed=parsed)
        instance_object_missing(instance=existing, actor=actor)
        return _reject(
            tenant=tenant,
            actor=actor,
            name=name,
            code="stored_copy_missing",
            message=(
                "An instance with this SOPInstanceUID is recorded but its stored copy is "
                "missing, and this file is not byte for byte the one recorded, so it was "
                "not used in its place; tell the clinic's administrator."
            ),
        )
    if same_file or _same_data_set(existing=existing, parsed=parsed, actor=actor):
        detail = {"study": str(existing.study_id)}
        if not same_file:
            detail["file_meta"] = "differs"
        audit.record(
            actor=actor,
            action=Action.INSTANCE_DUPLICATE,
            target=existing,
            tenant=tenant,
            detail=detail,
        )
        # The meta correction is reported only where the stored file is the corrected
        # one: a copy stored before corrections, or by another toolkit, keeps its meta.
        return _stored(name, parsed, existing, IngestOutcome.DUPLICATE, corrected=same_file)
    return _reject(
        tenant=tenant,
        actor=actor,
        name=name,
        code="conflict",
        message=(
            "An instance with this SOPInstanceUID is already stored with different content; "
            "the stored instance was kept unchanged."
        ),
    )


RESTORED_MESSAGE = "The stored copy of this instance was missing; this file restored it."


def _restore(
    *, tenant: Tenant, actor: Actor, name: str, existing: Instance, parsed: ParsedInstance
) -> IngestResult:
    """Write an instance's missing object again from a copy of the same bytes.

    The copy's SHA-256 is the one recorded when the instance was stored, so it is that
    content byte for byte; it goes under the recorded key, and the row is unchanged.
    """
    storage = storage_for(tenant)
    with transaction.atomic():
        # Locked: two senders restoring at once write the key once.
        instance = Instance.objects.for_tenant(tenant).select_for_update().get(pk=existing.pk)
        restored = not object_exists(storage, instance.storage_key)
        if restored:
            # Audited first: an audit that fails writes nothing, and a write that fails
            # rolls the event back.
            audit.record(
                actor=actor,
                action=Action.INSTANCE_RESTORED,
                target=instance,
                tenant=tenant,
                detail={"study": str(instance.study_id)},
            )
            dek = instance_study_key(instance=instance, actor=actor)
            context = ObjectContext(tenant.pk, instance.storage_key)
            chunks = encrypt_stream([parsed.data], key=dek, context=context)
            object_write(storage, instance.storage_key, chunks)
    if not restored:  # another sender's copy restored it meanwhile: a duplicate now
        return _duplicate(tenant=tenant, actor=actor, name=name, existing=instance, parsed=parsed)
    return replace(_stored(name, parsed, instance), message=RESTORED_MESSAGE)


def _same_data_set(*, existing: Instance, parsed: ParsedInstance, actor: Actor) -> bool:
    """Whether a re-sent file differs from the stored one only in its file meta.

    Toolkits rewrite group 0002 as they pass a file on (their implementation UID, the
    source AE title), so the same instance comes back with another whole-file hash. The
    data set after the meta, in the same transfer syntax, is the instance's content.
    """
    if existing.transfer_syntax_uid != parsed.transfer_syntax_uid:
        return False
    start = dataset_offset(parsed.data)
    if start is None:
        return False
    sent = memoryview(parsed.data)[start:]
    # Compared a decrypted segment at a time: a large instance is never held twice.
    chunks = instance_chunks(instance=existing, actor=actor)
    try:
        first = next(chunks, b"")
        stored_start = dataset_offset(first)
        if stored_start is None or existing.size_bytes - stored_start != len(sent):
            return False
        at, piece = 0, memoryview(first)[stored_start:]
        while piece is not None:
            if sent[at : at + len(piece)] != piece:
                return False
            at += len(piece)
            piece = next(chunks, None)  # the last one ends with the SHA-256 check
        return at == len(sent)
    except CryptoIntegrityError:
        return False  # audited as it was read; the stored copy is kept as it is
    finally:
        chunks.close()


def _patient_key(parsed: ParsedInstance) -> tuple[str, str]:
    """(issuer, patient id) of the record a file belongs to."""
    if not parsed.patient_id:
        # No PatientID: never merge strangers into one record; one patient per study.
        return "no-id:" + hashlib.sha256(parsed.study_uid.encode()).hexdigest()[:40], ""
    return parsed.issuer, parsed.patient_id


def _patient(tenant: Tenant, parsed: ParsedInstance) -> Patient:
    issuer, patient_id = _patient_key(parsed)
    patient, _ = Patient.objects.for_tenant(tenant).get_or_create(
        tenant=tenant,
        issuer=issuer,
        patient_id=patient_id,
        defaults={
            "name": parsed.patient_name,
            "birth_date": parsed.birth_date,
            "sex": parsed.sex,
        },
    )
    return patient


def _study_key(study: Study) -> bytes:
    try:
        return study_dek(study=study)
    except CryptoIntegrityError:
        raise _Conflict(
            "study_key_unreadable",
            "The study's data key cannot be opened (an integrity failure for the clinic's "
            "administrators); the file was not added to it.",
        ) from None


def _study(tenant: Tenant, parsed: ParsedInstance, patient: Patient) -> tuple[Study, bytes]:
    study = (
        Study.objects.for_tenant(tenant)
        .select_for_update()
        .filter(study_uid=parsed.study_uid)
        .first()
    )
    if study is not None:
        if study.patient_id != patient.pk:
            raise _Conflict(
                "patient_mismatch",
                "This study is already stored under a different patient ID; the file was not "
                "added to it.",
            )
        return study, _study_key(study)
    study, dek = _new_study(tenant, parsed, patient)
    study.save(force_insert=True)
    return study, dek


def _new_study(
    tenant: Tenant,
    parsed: ParsedInstance,
    patient: Patient,
    active_key: tuple[int, bytes] | None = None,
) -> tuple[Study, bytes]:
    """An unsaved study described by its first file, with a fresh data key."""
    study = Study(
        tenant=tenant,
        patient=patient,
        study_uid=parsed.study_uid,
        study_date=parsed.study_date,
        study_time=parsed.study_time,
        accession_number=parsed.accession_number,
        study_id=parsed.study_id,
        description=parsed.study_description,
        referring_physician=parsed.referring_physician,
    )
    dek, study.wrapped_dek, study.key_version = study_dek_new(
        tenant=tenant, study_id=study.pk, active_key=active_key
    )
    return study, dek


def _series(tenant: Tenant, parsed: ParsedInstance, study: Study) -> tuple[Series, bool]:
    series = (
        Series.objects.for_tenant(tenant)
        .select_for_update()
        .filter(series_uid=parsed.series_uid)
        .first()
    )
    if series is not None:
        if series.study_id != study.pk:
            raise _Conflict(
                "series_mismatch", "This series is already stored in a different study."
            )
        return series, False
    series = _new_series(tenant, parsed, study)
    series.save(force_insert=True)
    series_requests_create(tenant=tenant, series=[series])
    return series, True


def _new_series(tenant: Tenant, parsed: ParsedInstance, study: Study) -> Series:
    """An unsaved series described by its first file."""
    return Series(
        tenant=tenant,
        study=study,
        series_uid=parsed.series_uid,
        modality=parsed.modality,
        series_number=parsed.series_number,
        description=parsed.series_description,
        body_part=parsed.body_part,
        performed_date=parsed.performed_date,
        performed_time=parsed.performed_time,
        request_attributes=[list(pair) for pair in parsed.request_attributes],
    )


def _instance_row(
    *,
    tenant: Tenant,
    study: Study,
    series: Series,
    parsed: ParsedInstance,
    key: str,
    dek: bytes,
) -> Instance:
    return Instance(
        tenant=tenant,
        series=series,
        study=study,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        instance_number=parsed.instance_number,
        number_of_frames=parsed.number_of_frames,
        rows=parsed.rows,
        pixel_tag=parsed.pixel_tag,
        pixel_layout=parsed.pixel_layout,
        pixels_may_identify=parsed.pixels_may_identify,
        columns=parsed.columns,
        bits_allocated=parsed.bits_allocated,
        size_bytes=len(parsed.data),
        sha256=parsed.sha256,
        storage_key=key,
        key_version=study.key_version,
        original_sha256=parsed.original_sha256 if parsed.sha256 != parsed.original_sha256 else "",
        metadata=metadata_seal(
            header_json=parsed.metadata, key=dek, tenant_id=tenant.pk, storage_key=key
        ),
    )


def _stored_audit_entries(*, instance: Instance, parsed: ParsedInstance) -> list[audit.Entry]:
    entries = [
        audit.Entry(
            action=Action.INSTANCE_STORED,
            target=instance,
            detail={
                "study": str(instance.study_id),
                "series": str(instance.series_id),
                "bytes": len(parsed.data),
                **({"meta_corrected": list(parsed.corrected)} if parsed.corrected else {}),
            },
        )
    ]
    if parsed.preamble != "zero":
        entries.append(
            audit.Entry(
                action=Action.PREAMBLE_NEUTRALISED,
                target=instance,
                outcome=Outcome.DENIED,
                detail={"preamble": parsed.preamble, "original_sha256": parsed.original_sha256},
            )
        )
    return entries


def _store(*, tenant: Tenant, actor: Actor, name: str, parsed: ParsedInstance) -> IngestResult:
    storage = storage_for(tenant)
    key = object_key_new(tenant)
    written = False
    # Objects are removed only while their row surely did not commit: not once the
    # commit has run its first callback, nor when the commit itself failed (its outcome
    # is unknown then; the orphan sweep removes the object if the row is not there).
    committed: list[bool] = []
    at_commit = False
    try:
        with transaction.atomic():
            transaction.on_commit(partial(committed.append, True))  # the first callback
            patient = _patient(tenant, parsed)
            study, dek = _study(tenant, parsed, patient)
            differs = _differs_noted(study, patient=patient, parsed=parsed)
            series, new_series = _series(tenant, parsed, study)
            object_write(
                storage,
                key,
                encrypt_stream([parsed.data], key=dek, context=ObjectContext(tenant.pk, key)),
            )
            written = True
            instance = _instance_row(
                tenant=tenant, study=study, series=series, parsed=parsed, key=key, dek=dek
            )
            instance.save(force_insert=True)
            _update_counts(study=study, series=series, parsed=parsed, new_series=new_series)
            entries = _stored_audit_entries(instance=instance, parsed=parsed)
            if differs:
                entries.append(_differs_entry(study, differs))
            audit.record_many(actor=actor, tenant=tenant, entries=entries)
            if new_series:
                _enqueue_thumbnails(tenant_id=str(tenant.pk), series_ids=[str(series.pk)])
            at_commit = True
    except Exception as exc:
        if committed:
            return _stored_despite(exc, _stored(name, parsed, instance))
        if written and not at_commit:
            _delete_quietly(storage, key)
        raise
    except BaseException:
        if written and not committed and not at_commit:
            _delete_quietly(storage, key)
        raise
    return _stored(name, parsed, instance)


def _stored_despite(exc: Exception, stored: _T) -> _T:
    """The store committed and something after it failed: the store is still the answer."""
    logger.error("a step after an ingest committed failed: %s", type(exc).__name__)
    return stored


# --- Many files in one transaction (STOW-RS) -------------------------------------------


class _OneByOne(Exception):
    """The batch needs the one-file-at-a-time path: a duplicate, a conflict, a race."""


def ingest_many(
    *,
    tenant: Tenant,
    actor: Actor,
    items: Sequence[tuple[str, bytes]],
    study_uid: str | None = None,
) -> list[IngestResult]:
    """Ingest (name, bytes) items; the same outcomes as `ingest_bytes` on each, in order.

    New instances, what a STOW-RS request usually carries, are stored in one
    transaction: one lock per study and series, one bulk insert, one audit append.
    A batch with anything else (a duplicate, a conflict, a concurrent writer on the same
    rows) goes through `ingest_bytes`'s path one file at a time instead. `study_uid`,
    when given, rejects files of any other study.
    """
    results: list[IngestResult | None] = [None] * len(items)
    batch: list[tuple[int, str, ParsedInstance]] = []
    # Hashing releases the GIL: the files' digests are computed on other threads while
    # this one parses (pydicom does not release it).
    digests = [_hashers().submit(_sha256, data) for _, data in items]
    for index, (name, data) in enumerate(items):
        try:
            parsed = _parse(data, digests[index])
        except DicomRejected as exc:
            results[index] = _reject(
                tenant=tenant, actor=actor, name=name, code=exc.code, message=exc.message
            )
            continue
        if study_uid is not None and parsed.study_uid != study_uid:
            results[index] = _reject(
                tenant=tenant,
                actor=actor,
                name=name,
                code="study_mismatch",
                message="The file belongs to another study than the one addressed.",
            )
            continue
        batch.append((index, name, parsed))
    if batch:
        try:
            stored = _store_many(tenant=tenant, actor=actor, batch=batch)
        except _OneByOne:
            stored = [
                (index, _ingest_one(tenant=tenant, actor=actor, name=name, parsed=parsed))
                for index, name, parsed in batch
            ]
        except Exception as exc:
            # Nothing of the batch was kept (see _store_many); each file says so.
            _store_failure_logged(tenant=tenant, exc=exc)
            _store_failure_audited(
                tenant=tenant, actor=actor, error=type(exc).__name__, files=len(batch)
            )
            stored = [(index, _store_failed(name, parsed)) for index, name, parsed in batch]
        for index, result in stored:
            results[index] = result
    return [result for result in results if result is not None]


def _store_failure_audited(*, tenant: Tenant, actor: Actor, error: str, files: int = 1) -> None:
    """Audit files that passed every check and could not be stored, as refused ones
    are: the clinic sees what it was sent and did not keep. Best effort: the database may
    be what failed."""
    entry = audit.Entry(
        action=Action.INSTANCE_REJECTED,
        target=None,
        outcome=Outcome.FAILURE,
        detail={"code": "store_failed", "error": error},
    )
    try:
        with transaction.atomic():
            audit.record_many(actor=actor, tenant=tenant, entries=[entry] * files)
    except Exception as exc:
        logger.error("ingest could not audit a failed store: %s", type(exc).__name__)


def _store_failure_logged(*, tenant: Tenant, exc: Exception) -> None:
    # The type only: a database error's text can quote the row's values (a PatientID).
    logger.error(
        "ingest failed to store for tenant %s: %s at %s",
        tenant.pk,
        type(exc).__name__,
        raised_at(exc),
    )


def _store_failed(name: str, parsed: ParsedInstance) -> IngestResult:
    return IngestResult(
        name=name,
        outcome=IngestOutcome.REJECTED,
        code="store_failed",
        message="The file could not be stored; nothing of it was kept. Send it again.",
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
    )


def _ingest_one(*, tenant: Tenant, actor: Actor, name: str, parsed: ParsedInstance) -> IngestResult:
    """`_ingest_parsed` for one file of many stored one at a time, a failure to store
    it being that file's result.

    The files before it are committed by then, and the caller has to be able to say so:
    an exception would report them all as failed. The failed file left nothing
    behind (its transaction, or savepoint inside a caller's, rolled back, its object
    removed).
    """
    try:
        return _ingest_parsed(tenant=tenant, actor=actor, name=name, parsed=parsed)
    except Exception as exc:
        _store_failure_logged(tenant=tenant, exc=exc)
        _store_failure_audited(tenant=tenant, actor=actor, error=type(exc).__name__)
        return _store_failed(name, parsed)


def _store_many(
    *, tenant: Tenant, actor: Actor, batch: list[tuple[int, str, ParsedInstance]]
) -> list[tuple[int, IngestResult]]:
    uids = [parsed.sop_instance_uid for _, _, parsed in batch]
    if (
        len(batch) == 1
        or len(set(uids)) != len(uids)
        or Instance.objects.for_tenant(tenant).filter(sop_instance_uid__in=uids).exists()
    ):
        raise _OneByOne
    # Rows are locked in study then series UID order, as the one-file path locks a study
    # then its series, so concurrent writers wait on each other but never deadlock.
    batch = sorted(batch, key=lambda item: (item[2].study_uid, item[2].series_uid))
    storage = storage_for(tenant)
    written: list[str] = []
    committed: list[bool] = []  # as in _store
    at_commit = False
    stored: list[tuple[int, IngestResult]] = []
    try:
        with transaction.atomic():
            transaction.on_commit(partial(committed.append, True))  # the first callback
            stored = _store_many_locked(
                tenant=tenant, actor=actor, batch=batch, storage=storage, written=written
            )
            at_commit = True
        return stored
    except BaseException as exc:
        if committed and isinstance(exc, Exception):
            return _stored_despite(exc, stored)
        if committed or at_commit:
            raise
        for key in written:
            _delete_quietly(storage, key)
        if (
            isinstance(exc, _Conflict)
            or (isinstance(exc, IntegrityError) and _is_unique_violation(exc))
            or (isinstance(exc, OperationalError) and "deadlock" in str(exc).lower())
        ):
            raise _OneByOne from exc
        raise


def _store_many_locked(
    *,
    tenant: Tenant,
    actor: Actor,
    batch: list[tuple[int, str, ParsedInstance]],
    storage: object,
    written: list[str],
) -> list[tuple[int, IngestResult]]:
    """Rows for the whole batch in a few queries: one select and one insert per table.

    A row another request creates meanwhile makes an insert fail (unique constraint),
    and the caller then stores the batch one file at a time.
    """
    files = [parsed for _, _, parsed in batch]
    patients = _patients_for(tenant=tenant, files=files)
    studies = _studies_for(tenant=tenant, files=files, patients=patients)
    series_rows, new_series = _series_for(tenant=tenant, files=files, studies=studies)
    instances, objects = [], []
    for parsed in files:
        study, dek = studies[parsed.study_uid]
        series = series_rows[parsed.series_uid]
        object_key = object_key_new(tenant)
        context = ObjectContext(tenant.pk, object_key)
        objects.append((object_key, encrypt_stream([parsed.data], key=dek, context=context)))
        instances.append(
            _instance_row(
                tenant=tenant, study=study, series=series, parsed=parsed, key=object_key, dek=dek
            )
        )
    written.extend(key for key, _ in objects)  # removed again if anything below fails
    object_write_many(storage, objects)  # type: ignore[arg-type]
    Instance.objects.bulk_create(instances)
    entries = []
    for instance, parsed in zip(instances, files, strict=True):
        entries.extend(_stored_audit_entries(instance=instance, parsed=parsed))
    audit.record_many(actor=actor, tenant=tenant, entries=entries)
    if new_series:
        _enqueue_thumbnails(
            tenant_id=str(tenant.pk), series_ids=[str(series.pk) for series in new_series]
        )
    return [
        (index, _stored(name, parsed, instance))
        for instance, (index, name, parsed) in zip(instances, batch, strict=True)
    ]


def _patients_for(*, tenant: Tenant, files: list[ParsedInstance]) -> dict[tuple[str, str], Patient]:
    first: dict[tuple[str, str], ParsedInstance] = {}
    for parsed in files:
        first.setdefault(_patient_key(parsed), parsed)
    wanted = Q()
    for issuer, patient_id in first:
        wanted |= Q(issuer=issuer, patient_id=patient_id)
    found = {(p.issuer, p.patient_id): p for p in Patient.objects.for_tenant(tenant).filter(wanted)}
    missing = [
        Patient(
            tenant=tenant,
            issuer=issuer,
            patient_id=patient_id,
            name=parsed.patient_name,
            birth_date=parsed.birth_date,
            sex=parsed.sex,
        )
        for (issuer, patient_id), parsed in first.items()
        if (issuer, patient_id) not in found
    ]
    Patient.objects.bulk_create(missing)
    found.update({(p.issuer, p.patient_id): p for p in missing})
    return found


def _studies_for(
    *,
    tenant: Tenant,
    files: list[ParsedInstance],
    patients: dict[tuple[str, str], Patient],
) -> dict[str, tuple[Study, bytes]]:
    """Each study of the batch, locked or new, with its key and its counters updated."""
    by_study: dict[str, list[ParsedInstance]] = {}
    for parsed in files:
        by_study.setdefault(parsed.study_uid, []).append(parsed)
    locked = {
        study.study_uid: study
        for study in Study.objects.for_tenant(tenant)
        .select_for_update()
        .filter(study_uid__in=sorted(by_study))
        .order_by("study_uid")
    }
    known_series = set(
        Series.objects.for_tenant(tenant)
        .filter(series_uid__in={p.series_uid for p in files})
        .values_list("series_uid", flat=True)
    )
    active_key = tenant_key_active(tenant=tenant) if len(locked) < len(by_study) else None
    studies: dict[str, tuple[Study, bytes]] = {}
    created = []
    for study_uid, parsed_list in by_study.items():
        patient = patients[_patient_key(parsed_list[0])]
        if any(patients[_patient_key(p)].pk != patient.pk for p in parsed_list):
            raise _Conflict("patient_mismatch", "")  # the one-by-one path says which file
        study = locked.get(study_uid)
        if study is None:
            study, dek = _new_study(tenant, parsed_list[0], patient, active_key)
            created.append(study)
        elif study.patient_id != patient.pk:
            raise _Conflict("patient_mismatch", "")
        else:
            dek = _study_key(study)
        if any(_differs_new(study, patient=patient, parsed=p) for p in parsed_list):
            raise _OneByOne  # rare; that path notes and audits it on the file that differs
        new_series = {p.series_uid for p in parsed_list} - known_series
        _count_into(study=study, parsed_list=parsed_list, new_series=len(new_series))
        if study_uid in locked:
            study.save(update_fields=STUDY_COUNTERS)
        studies[study_uid] = (study, dek)
    Study.objects.bulk_create(created)
    return studies


STUDY_COUNTERS = ["num_instances", "num_series", "size_bytes", "modalities", "updated_at"]


def _count_into(*, study: Study, parsed_list: list[ParsedInstance], new_series: int) -> None:
    """Add files stored under `study` to its counters (in memory; the caller saves)."""
    modalities = set(filter(None, study.modalities.split("\\")))
    modalities.update(p.modality for p in parsed_list if p.modality)
    study.num_instances += len(parsed_list)
    study.num_series += new_series
    study.size_bytes += sum(len(p.data) for p in parsed_list)
    study.modalities = "\\".join(sorted(modalities))[:128]
    study.updated_at = timezone.now()


def _series_for(
    *,
    tenant: Tenant,
    files: list[ParsedInstance],
    studies: dict[str, tuple[Study, bytes]],
) -> tuple[dict[str, Series], list[Series]]:
    by_series: dict[str, list[ParsedInstance]] = {}
    for parsed in files:
        by_series.setdefault(parsed.series_uid, []).append(parsed)
    locked = {
        series.series_uid: series
        for series in Series.objects.for_tenant(tenant)
        .select_for_update()
        .filter(series_uid__in=sorted(by_series))
        .order_by("series_uid")
    }
    rows: dict[str, Series] = {}
    created = []
    for series_uid, parsed_list in by_series.items():
        first = parsed_list[0]
        study = studies[first.study_uid][0]
        if any(p.study_uid != first.study_uid for p in parsed_list):
            raise _Conflict("series_mismatch", "")
        series = locked.get(series_uid)
        if series is None:
            series = _new_series(tenant, first, study)
            series.num_instances = len(parsed_list)
            created.append(series)
        elif series.study_id != study.pk:
            raise _Conflict("series_mismatch", "")
        else:
            series.num_instances += len(parsed_list)
            series.save(update_fields=["num_instances"])
        rows[series_uid] = series
    Series.objects.bulk_create(created)
    series_requests_create(tenant=tenant, series=created)
    return rows, created


def _enqueue_thumbnails(*, tenant_id: str, series_ids: list[str]) -> None:
    """Queue the new series' thumbnails once the rows commit.

    A short delay lets the rest of a series arrive, so the middle slice is chosen.
    """
    from imaging.tasks import series_thumbnail, series_thumbnails

    if len(series_ids) == 1:
        task, kwargs = series_thumbnail, {"tenant_id": tenant_id, "series_id": series_ids[0]}
    else:
        task, kwargs = series_thumbnails, {"tenant_id": tenant_id, "series_ids": series_ids}
    task_send_on_commit(task=task, kwargs=kwargs, countdown=settings.THUMBNAIL_DELAY_SECONDS)


def _delete_quietly(storage: object, key: str) -> None:
    if not object_delete_quietly(storage, key):  # type: ignore[arg-type]
        logger.warning("could not remove object %s after a failed ingest; the sweep will", key)


def _update_counts(
    *, study: Study, series: Series, parsed: ParsedInstance, new_series: bool
) -> None:
    series.num_instances += 1
    series.save(update_fields=["num_instances"])
    _count_into(study=study, parsed_list=[parsed], new_series=1 if new_series else 0)
    study.save(
        update_fields=[*STUDY_COUNTERS, "patient_differs", "patient_held", "patient_headers"]
    )


def _name_groups(name: str) -> list[str]:
    """A person name's groups (alphabetic, ideographic, phonetic) as compared with
    another's: components stripped, trailing empty ones dropped, case and spacing
    ignored ("Doe^John^^" is "doe^john")."""
    groups = []
    for group in name.split("=")[:3]:
        components = [" ".join(part.split()) for part in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components).casefold())
    while groups and not groups[-1]:
        groups.pop()
    return groups


def _names_differ(record: str, file: str) -> bool:
    """Whether two person names differ in the first group both give.

    One group only: a clinic writing names in ideographic characters alone is checked
    as one writing them in letters, and a second group written in other characters
    (katakana for hiragana, a variant kanji) is no other person.
    """
    for ours, theirs in zip(_name_groups(record), _name_groups(file), strict=False):
        if ours and theirs:
            return ours != theirs
    return False


def _patient_differs(patient: Patient, parsed: ParsedInstance) -> set[str]:
    """The details a file gives otherwise than its patient record; a detail either
    leaves out is not a difference."""
    differs = set()
    if patient.birth_date and parsed.birth_date and patient.birth_date != parsed.birth_date:
        differs.add("birth_date")
    if _names_differ(patient.name, parsed.patient_name):
        differs.add("name")
    return differs


def _header_identity(parsed: ParsedInstance) -> str:
    """A digest of the patient details a file gives, as they are compared."""
    birth_date = parsed.birth_date.isoformat() if parsed.birth_date else ""
    text = f"{'='.join(_name_groups(parsed.patient_name))}|{birth_date}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _differs_new(study: Study, *, patient: Patient, parsed: ParsedInstance) -> set[str]:
    """The details a file gives otherwise than its record, if the study has not seen
    this set of them before; else nothing."""
    differs = _patient_differs(patient, parsed)
    if not differs or _header_identity(parsed) in study.patient_headers:
        return set()
    return differs


def _differs_noted(study: Study, *, patient: Patient, parsed: ParsedInstance) -> list[str]:
    """Note on the study (unsaved) a set of patient details its record does not give,
    first seen in this file: it holds the study from the patient portal, again if it
    was confirmed before. The differing fields are returned (none if not new)."""
    differs = _differs_new(study, patient=patient, parsed=parsed)
    if differs:
        study.patient_headers = [*study.patient_headers, _header_identity(parsed)]
        study.patient_differs = sorted({*study.patient_differs, *differs})
        study.patient_held = True
    return sorted(differs)


def _differs_entry(study: Study, differs: list[str]) -> audit.Entry:
    # Which details differ, never their values: the record and the images hold those.
    return audit.Entry(
        action=Action.STUDY_PATIENT_DIFFERS,
        target=study,
        detail={"fields": differs, "held_from_patient_portal": True},
    )


# --- Archives and folders -----------------------------------------------------------


# Control characters (C0, DEL, C1) and the Unicode line separators: in a file name shown
# to a person they could start a line of their own, or repaint a terminal.
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with its control characters written out (`\\x0a`), for one line of a report."""
    return UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def _safe_name(name: str) -> str:
    """A display name for reports: the last path part, never used to write anything."""
    return printable(Path(name.replace("\\", "/")).name[:200]) or "(unnamed)"


def ingest_archive(
    *, tenant: Tenant, actor: Actor, fileobj: io.BufferedIOBase, name: str
) -> list[IngestResult]:
    """Ingest every file of a zip, after checking it cannot exhaust memory or disk.

    Entry names are only reported, never used as paths (no zip slip); nothing is
    extracted to disk; nested archives are refused.
    """
    try:
        problem = _zip_directory_problem(fileobj)
        archive = zipfile.ZipFile(fileobj) if problem is None else None
        entries = [info for info in archive.infolist() if not info.is_dir()] if archive else []
    except Exception as exc:  # zipfile raises others on hostile input (a version, a name)
        known = isinstance(exc, (zipfile.BadZipFile, OSError, ValueError))
        return [
            _reject(
                tenant=tenant,
                actor=actor,
                name=name,
                code="bad_archive",
                message="The zip archive could not be read "
                f"({exc if known else 'its directory is not valid'}).",
            )
        ]
    problem = problem or _zip_size_problem(entries, archive_bytes=fileobj.seek(0, io.SEEK_END))
    if problem:
        return [
            _reject(
                tenant=tenant,
                actor=actor,
                name=name,
                code="zip_bomb",
                message=f"The zip archive was refused: {problem}.",
            )
        ]
    results = []
    for info in entries:
        entry_name = _safe_name(info.filename)
        if info.file_size > settings.INGEST_MAX_INSTANCE_BYTES:
            results.append(
                _reject(
                    tenant=tenant,
                    actor=actor,
                    name=entry_name,
                    code="too_large",
                    message="File is larger than the per-file limit.",
                )
            )
            continue
        try:
            with archive.open(info) as handle:
                # One byte past the declared size: a lying header cannot inflate further.
                data = handle.read(info.file_size + 1)
        except (
            zipfile.BadZipFile,
            zlib.error,
            lzma.LZMAError,
            RuntimeError,
            OSError,
            NotImplementedError,
            EOFError,
            ValueError,
        ) as exc:
            results.append(
                _reject(
                    tenant=tenant,
                    actor=actor,
                    name=entry_name,
                    code="bad_archive",
                    message=f"This zip entry cannot be read ({str(exc)[:100]}).",
                )
            )
            continue
        if len(data) > info.file_size:
            results.append(
                _reject(
                    tenant=tenant,
                    actor=actor,
                    name=entry_name,
                    code="zip_bomb",
                    message="A zip entry is larger than its header declares.",
                )
            )
            continue
        if data.startswith(ZIP_MAGIC) or entry_name.lower().endswith(".zip"):
            results.append(
                _reject(
                    tenant=tenant,
                    actor=actor,
                    name=entry_name,
                    code="nested_archive",
                    message="Archives inside archives are not accepted; unpack it first.",
                )
            )
            continue
        results.append(_ingest_isolated(tenant=tenant, actor=actor, data=data, name=entry_name))
    return results


def _zip_size_problem(entries: list[zipfile.ZipInfo], *, archive_bytes: int) -> str | None:
    """Why a zip's listed files are too many or expand too far, or None.

    The ratio is taken on the compressed sizes the directory declares, so those must fit
    in the archive: a directory claiming more would hide a bomb's ratio, and entries
    sharing their compressed bytes (overlapping files) can only claim more.
    """
    total = sum(info.file_size for info in entries)
    compressed = sum(info.compress_size for info in entries) or 1
    if len(entries) > settings.INGEST_MAX_ZIP_ENTRIES:
        return f"it holds {len(entries)} files (limit {settings.INGEST_MAX_ZIP_ENTRIES})"
    if compressed > archive_bytes:
        return (
            f"its directory declares {compressed} compressed bytes, "
            f"more than the {archive_bytes} bytes of the archive"
        )
    if total > settings.INGEST_MAX_ZIP_TOTAL_BYTES:
        return f"it expands to {total} bytes (limit {settings.INGEST_MAX_ZIP_TOTAL_BYTES})"
    if total / compressed > settings.INGEST_MAX_ZIP_RATIO:
        return f"it expands {total // compressed}-fold (limit {settings.INGEST_MAX_ZIP_RATIO})"
    return None


# A central directory entry: its signature, then the lengths of its name, extra field and
# comment at offsets 28, 30 and 32 (PKWARE APPNOTE 4.3.12).
_DIRECTORY_ENTRY = struct.Struct("<4s24xHHH12x")
_DIRECTORY_SIGNATURE = b"PK\x01\x02"
# Room for one entry of the central directory: its fixed part and a long path.
ZIP_DIRECTORY_BYTES_PER_ENTRY = 1024


def _zip_directory_problem(fileobj: io.BufferedIOBase) -> str | None:
    """Why a zip's central directory is too large to read, or None.

    zipfile reads the whole directory and makes an object for every entry (about ten
    times the directory's size) before the entry limit could be checked: a 45 MiB
    directory of a million entries took 460 MiB. The directory's size and entries are
    checked first, on its raw bytes. A directory zipfile would refuse anyway is left
    for zipfile to describe.
    """
    # zipfile's own reader of the end records (ZIP64 included), so both agree on where
    # the directory is; stable since Python 2.
    end = zipfile._EndRecData(fileobj)
    if not end:
        return None
    size, location = end[zipfile._ECD_SIZE], end[zipfile._ECD_LOCATION]
    limit = settings.INGEST_MAX_ZIP_ENTRIES
    if size > limit * ZIP_DIRECTORY_BYTES_PER_ENTRY:
        return f"its directory takes {size} bytes (limit {limit * ZIP_DIRECTORY_BYTES_PER_ENTRY})"
    start = location - size
    if end[0] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0:
        return None
    fileobj.seek(start)
    directory = fileobj.read(size)
    fileobj.seek(0)
    entries, at = 0, 0
    while at + _DIRECTORY_ENTRY.size <= len(directory):
        signature, name, extra, comment = _DIRECTORY_ENTRY.unpack_from(directory, at)
        if signature != _DIRECTORY_SIGNATURE:
            return None
        entries += 1
        if entries > limit:
            return f"its directory lists more than {limit} entries (limit {limit})"
        at += _DIRECTORY_ENTRY.size + name + extra + comment
    return None


def ingest_paths(*, tenant: Tenant, actor: Actor, paths: Iterable[Path]) -> Iterator[IngestResult]:
    """Ingest files, folders (recursively) and zip archives from the local disk.

    Yields each file's result once it is stored or refused (an archive's once the whole
    archive is done), so a caller stopped midway knows what was kept. A path that cannot
    be read (no permission, removed meanwhile, not a regular file) is rejected with its
    reason; the others go on.
    """
    for path, problem in _walk(paths):
        if problem is None:
            try:
                yield from _ingest_path(tenant=tenant, actor=actor, path=path)
                continue
            except _Unreadable as exc:
                problem = f"The file could not be read ({exc})."
        yield _reject(
            tenant=tenant, actor=actor, name=str(path), code="unreadable", message=problem
        )


class _Unreadable(Exception):
    """Reading a local file failed (an OSError while reading, not while storing)."""


def _ingest_path(*, tenant: Tenant, actor: Actor, path: Path) -> list[IngestResult]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _Unreadable(exc.strerror or type(exc).__name__) from None
    with handle:
        try:
            head = handle.read(4)
            handle.seek(0)
            size = os.fstat(handle.fileno()).st_size
            is_zip = head == ZIP_MAGIC
            data = b"" if is_zip or size > settings.INGEST_MAX_INSTANCE_BYTES else handle.read()
        except OSError as exc:
            raise _Unreadable(exc.strerror or type(exc).__name__) from None
        if is_zip:
            return ingest_archive(tenant=tenant, actor=actor, fileobj=handle, name=str(path))
        if size > settings.INGEST_MAX_INSTANCE_BYTES:
            return [
                _reject(
                    tenant=tenant,
                    actor=actor,
                    name=str(path),
                    code="too_large",
                    message="File is larger than the per-file limit.",
                )
            ]
    return [_ingest_isolated(tenant=tenant, actor=actor, data=data, name=str(path))]


def _walk(paths: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """Each file to ingest, with None, or with why it is not read."""
    for path in paths:
        if path.is_symlink() and not path.exists():
            yield path, "The path is a broken symbolic link."
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_symlink():
                    continue  # inside a folder, links are not followed (they may lead out)
                if found.is_file():
                    yield found, None
                elif not found.is_dir():
                    yield found, "Not a regular file (a device, pipe or socket); skipped."
        elif path.is_file():
            yield path, None
        elif path.exists():
            yield path, "Not a regular file (a device, pipe or socket); skipped."
        else:
            yield path, "No such file or folder."


def ingest_uploads(*, tenant: Tenant, actor: Actor, files: Iterable[object]) -> IngestSummary:
    """Ingest uploaded files (Django UploadedFile objects): DICOM files or zip archives."""
    results: list[IngestResult] = []
    for upload in files:
        name = _safe_name(getattr(upload, "name", "") or "")
        handle = upload.open("rb")  # type: ignore[attr-defined]
        try:
            head = handle.read(4)
            handle.seek(0)
            if head == ZIP_MAGIC:
                results.extend(
                    ingest_archive(tenant=tenant, actor=actor, fileobj=handle, name=name)
                )
            elif upload.size > settings.INGEST_MAX_INSTANCE_BYTES:  # type: ignore[attr-defined]
                results.append(
                    _reject(
                        tenant=tenant,
                        actor=actor,
                        name=name,
                        code="too_large",
                        message="File is larger than the per-file limit.",
                    )
                )
            else:
                results.append(
                    _ingest_isolated(tenant=tenant, actor=actor, data=handle.read(), name=name)
                )
        finally:
            upload.close()  # type: ignore[attr-defined]
    return IngestSummary(results)
