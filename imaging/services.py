"""Reads of stored objects (decrypt, verify, audit), the orphan sweep, study actions."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any, NamedTuple, TypeVar

import pydicom
from django.conf import settings
from django.core.files.storage import Storage
from django.db import transaction
from django.utils import timezone

import audit
from audit.actors import Actor
from audit.models import Action, Outcome
from imaging.crypto import (
    IntegrityError,
    ObjectContext,
    decrypt_stream,
    decrypt_verified,
    plaintext_check,
)
from imaging.deidentify import pixels_may_identify
from imaging.dicom import MAX_REQUEST_ATTRIBUTES, date_from_text, metadata_json, pixel_tag
from imaging.keyring import study_dek
from imaging.metadata import header_stale, metadata_open, metadata_seal
from imaging.models import Instance, Series, SeriesRequest, Study
from imaging.render import pixel_layout, pixel_layout_current, pixel_value_offset
from imaging.selectors import STUDY_DOWNLOAD_PERM, STUDY_VIEW_PERM, study_access
from imaging.storage import (
    object_delete,
    object_key_is_ours,
    object_keys,
    object_open,
    storage_for,
)
from portal.tasks import task_send, task_send_on_commit
from tenants.grants import object_grant, object_granted, object_revoke
from tenants.models import Tenant, User
from tenants.selectors import membership_for_user

logger = logging.getLogger(__name__)


OBJECT_MISSING = "object missing"


def _integrity_failed(*, instance: Instance | Series, actor: Actor, reason: str) -> None:
    # Its own transaction: the caller's work is about to fail and roll back.
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.INTEGRITY_FAILED,
            target=instance,
            tenant=instance.tenant,
            outcome=Outcome.FAILURE,
            detail={"reason": reason[:100]},
        )


def instance_chunks(*, instance: Instance, actor: Actor) -> Iterator[bytes]:
    """Decrypt an instance in bounded memory; raises IntegrityError (audited) if altered."""
    storage = storage_for(instance.tenant)
    with _failures_audited(instance=instance, actor=actor):
        dek = study_dek(study=instance.study)
        with object_open(storage, instance.storage_key) as handle:
            yield from _plaintext(handle, instance=instance, dek=dek)


def _plaintext(handle: Any, *, instance: Instance, dek: bytes) -> Iterator[bytes]:
    """The object's plaintext, checked against the row's SHA-256 and size."""
    return decrypt_verified(
        handle.read,
        key=dek,
        context=ObjectContext(instance.tenant_id, instance.storage_key),
        sha256=instance.sha256,
        size=instance.size_bytes,
    )


@contextmanager
def _failures_audited(*, instance: Instance | Series, actor: Actor) -> Iterator[None]:
    """A failed check or a missing object is audited and raised as an IntegrityError."""
    try:
        yield
    except IntegrityError as exc:
        _integrity_failed(instance=instance, actor=actor, reason=str(exc))
        raise
    except FileNotFoundError:
        instance_object_missing(instance=instance, actor=actor)
        raise IntegrityError("stored object is missing") from None


def instance_object_missing(*, instance: Instance | Series, actor: Actor) -> None:
    """Audit and log a stored object found missing: a durability incident."""
    _integrity_failed(instance=instance, actor=actor, reason=OBJECT_MISSING)
    logger.warning("stored object of %s is missing", instance)


def instance_study_key(*, instance: Instance, actor: Actor) -> bytes:
    """The data key of the instance's study; a key that cannot be opened is audited
    against the instance and raised as an IntegrityError."""
    with _failures_audited(instance=instance, actor=actor):
        return study_dek(study=instance.study)


# Objects up to this size are read, decrypted and verified ahead of the one being sent.
READ_AHEAD_MAX_BYTES = 8 * 1024 * 1024
READ_AHEAD = 2


@lru_cache(maxsize=1)
def _readers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="object-read")


@lru_cache(maxsize=1)
def _checkers() -> ThreadPoolExecutor:
    # Its own pool: a reader thread waits on these, so they must not queue behind it.
    return ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="object-check")


os.register_at_fork(after_in_child=_readers.cache_clear)
os.register_at_fork(after_in_child=_checkers.cache_clear)


def _verified(storage: Storage, instance: Instance, dek: bytes) -> list[bytes]:
    # On a reader thread: no database here (the caller audits failures in its own).
    with object_open(storage, instance.storage_key) as handle:
        return list(_plaintext(handle, instance=instance, dek=dek))


def instances_chunks(*, instances: Sequence[Instance], actor: Actor) -> Iterator[Iterator[bytes]]:
    """For each instance in turn, its decrypted chunks (see `instance_chunks`).

    Small objects are read, decrypted and verified on reader threads a few instances
    ahead while the caller sends the current one: the hashing, the decryption and the
    socket writes all release the GIL, so they overlap. Each object is verified whole
    before any of it is handed on. Larger objects stream in bounded memory as usual.
    """
    storages: dict[object, Storage] = {}
    keys: dict[object, bytes] = {}
    pending: deque[tuple[Instance, Future[list[bytes]] | None]] = deque()

    def submit(instance: Instance) -> None:
        if instance.size_bytes > READ_AHEAD_MAX_BYTES:
            pending.append((instance, None))
            return
        if instance.tenant_id not in storages:
            storages[instance.tenant_id] = storage_for(instance.tenant)
        if instance.study_id not in keys:
            with _failures_audited(instance=instance, actor=actor):
                keys[instance.study_id] = study_dek(study=instance.study)
        storage, dek = storages[instance.tenant_id], keys[instance.study_id]
        pending.append((instance, _readers().submit(_verified, storage, instance, dek)))

    queue = iter(instances)
    try:
        for instance in islice(queue, READ_AHEAD):
            submit(instance)
        while pending:
            instance, future = pending.popleft()
            for following in islice(queue, 1):
                submit(following)
            if future is None:
                yield instance_chunks(instance=instance, actor=actor)
                continue
            with _failures_audited(instance=instance, actor=actor):
                chunks = future.result()
            yield iter(chunks)
    finally:
        for _, future in pending:  # the client went away: read no further
            if future is not None:
                future.cancel()


def instance_bytes(*, instance: Instance, actor: Actor) -> bytes:
    return b"".join(instance_chunks(instance=instance, actor=actor))


T = TypeVar("T")


def instance_process_start(*, instance: Instance, process: Callable[[bytes], T]) -> Future[T]:
    """Read and decrypt an instance on a reader thread and run `process` on its plaintext
    there while another thread checks it against the row's SHA-256; collect the result
    (given only if the check passed) with `instance_process_result`.

    The caller writes its audit event meanwhile: the append waits on the database's
    commit, the reading and processing on the CPU, and the two overlap. `process` must
    not touch the database (the reader threads have no connection).
    """
    storage = storage_for(instance.tenant)
    try:
        dek = study_dek(study=instance.study)  # may query: here, not on the reader thread
    except IntegrityError as exc:
        failed: Future[T] = Future()  # handed on, audited, by instance_process_result
        failed.set_exception(exc)
        return failed
    return _readers().submit(_processed, storage, instance, dek, process)


def _processed(
    storage: Storage, instance: Instance, dek: bytes, process: Callable[[bytes], T]
) -> T:
    # AES-GCM has authenticated each segment (the study key made it, for this clinic and
    # this object); the SHA-256 check against the row runs on another thread while
    # `process` works, and its result is handed on only if the check passes. A failed
    # check is what is raised, whatever `process` did. Hashing releases the GIL: for a
    # rendered CT frame, 0.1-0.15 ms off the answer.
    with object_open(storage, instance.storage_key) as handle:
        context = ObjectContext(instance.tenant_id, instance.storage_key)
        plaintext = b"".join(decrypt_stream(handle.read, key=dek, context=context))
    check = _checkers().submit(
        plaintext_check, plaintext, sha256=instance.sha256, size=instance.size_bytes
    )
    try:
        return process(plaintext)
    finally:
        check.result()


def instance_process_result(*, instance: Instance, actor: Actor, future: Future[T]) -> T:
    """The result of `instance_process_start`; a failed check is audited and raised."""
    with _failures_audited(instance=instance, actor=actor):
        return future.result()


def instance_header_json(*, instance: Instance, actor: Actor, key: bytes) -> bytes:
    """The instance's header as DICOM JSON from its row (b"" if stored before the cache).

    `key` is the study key (callers reading a series unwrap it once). Raises
    IntegrityError (audited) if the sealed header was altered or moved between rows.
    """
    sealed = bytes(instance.metadata or b"")
    if not sealed:
        return b""
    try:
        return metadata_open(
            sealed=sealed, key=key, tenant_id=instance.tenant_id, storage_key=instance.storage_key
        )
    except IntegrityError as exc:
        _integrity_failed(instance=instance, actor=actor, reason=f"metadata: {exc}")
        raise


def series_requests_create(*, tenant: Tenant, series: Sequence[Series]) -> None:
    """The rows QIDO-RS matches the orders of `series` by, one per RequestAttributesSequence
    item, for series that have none yet; no query when none names an order, as most
    series do not."""
    rows = [
        SeriesRequest(
            tenant=tenant, series=one, scheduled_step_id=step, requested_procedure_id=procedure
        )
        for one in series
        for step, procedure in one.request_attributes
    ]
    if rows:
        SeriesRequest.objects.bulk_create(rows)


class HeadersBackfilled(NamedTuple):
    kept: int  # rows that got a header
    unreadable: int  # rows whose object or kept header failed its check (audited each)


def instance_headers_backfill(
    *, tenant: Tenant, actor: Actor, batch: int = 200
) -> HeadersBackfilled:
    """Keep the encrypted header of instances whose kept header is missing or stale, and
    index from each header what rows stored before it was indexed lack.

    Missing: stored before headers were kept. Stale: kept before binary values over
    1 MB had bulk data paths (an empty BulkDataURI), or before the row recorded which
    pixel data its object holds and where its frames are. Such rows are served by
    parsing their objects on every metadata or frame read, which is slow for large
    series. Reads each such object once (verified) and seals its header on the row.
    Indexed: StudyID, the performed procedure step's start, the series' orders,
    BitsAllocated (QIDO-RS matches or returns them), where the row has none. Records
    one audit event per batch (the kept headers it opened included). Returns how many
    rows got a header, and how many could not be read: a durability incident to
    look into, not a pass.
    """
    done, unreadable, after = 0, 0, None
    while True:
        rows = Instance.objects.for_tenant(tenant)
        if after is not None:
            rows = rows.filter(pk__gt=after)
        rows = list(rows.select_related("tenant", "study", "series").order_by("pk")[:batch])
        if not rows:
            return HeadersBackfilled(kept=done, unreadable=unreadable)
        after = rows[-1].pk
        checked = len(rows)
        updated, sealed, failed = [], 0, 0
        studies: dict[Any, Study] = {}
        series: dict[Any, Series] = {}
        for row in rows:
            try:
                header = _header_current(row, actor=actor)
            except IntegrityError:
                failed += 1  # audited; the object is read on every request and checked there
                continue
            if header is None:
                try:
                    data = instance_bytes(instance=row, actor=actor)
                except IntegrityError:
                    failed += 1  # audited by instance_bytes; this row stays on the slow path
                    continue
                ds = pydicom.dcmread(io.BytesIO(data))  # whole: which pixel data it holds too
                row.pixel_layout = pixel_layout(ds, data=data, offset=pixel_value_offset(ds))
                row.pixel_tag = pixel_tag(ds)
                if not row.pixel_tag:
                    row.number_of_frames = None  # no pixel data, no frames
                row.pixels_may_identify = pixels_may_identify(ds)
                header = metadata_json(ds)
                if header:  # else no JSON form: it stays on the slow path, which says why
                    row.metadata = metadata_seal(
                        header_json=header,
                        key=study_dek(study=row.study),
                        tenant_id=tenant.pk,
                        storage_key=row.storage_key,
                    )
                    sealed += 1
                updated.append(row)
            indexed = bool(header) and _indexed_from_header(
                row, json.loads(header), studies, series
            )
            if indexed and row not in updated:
                updated.append(row)
        with transaction.atomic():
            if updated:
                Instance.objects.for_tenant(tenant).bulk_update(
                    updated,
                    [
                        "metadata",
                        "pixel_tag",
                        "pixel_layout",
                        "pixels_may_identify",
                        "bits_allocated",
                        "number_of_frames",
                    ],
                )
            if studies:
                Study.objects.for_tenant(tenant).bulk_update(list(studies.values()), ["study_id"])
            if series:
                Series.objects.for_tenant(tenant).bulk_update(
                    list(series.values()),
                    ["performed_date", "performed_time", "request_attributes"],
                )
                series_requests_create(tenant=tenant, series=list(series.values()))
            audit.record(
                actor=actor,
                action=Action.HEADERS_INDEXED,
                target=None,
                tenant=tenant,
                detail={"instances": sealed, "checked": checked, "unreadable": failed},
            )
        done += sealed
        unreadable += failed


def _header_current(row: Instance, *, actor: Actor) -> bytes | None:
    """The row's kept header, or None if it is missing or outdated (rebuilt from the
    object). Raises IntegrityError (audited) if the kept header fails its check."""
    if (
        not row.metadata
        or row.pixel_tag is None
        or row.pixels_may_identify is None
        or not pixel_layout_current(row.pixel_layout)
    ):
        return None
    key = instance_study_key(instance=row, actor=actor)
    header = instance_header_json(instance=row, actor=actor, key=key)
    return None if header_stale(header) else header


def _first_value(header: dict[str, Any], tag: str) -> Any:
    values = (header.get(tag) or {}).get("Value") or [None]
    return values[0]


def _request_attributes(header: dict[str, Any]) -> list[list[str]]:
    """What imaging.dicom.request_attributes reads, from a header's DICOM JSON."""
    pairs: dict[tuple[str, str], None] = {}
    for item in (header.get("00400275") or {}).get("Value") or []:
        if not isinstance(item, dict):
            continue
        pair = tuple(
            value.replace("\x00", "").strip()[:16] if isinstance(value, str) else ""
            for value in (_first_value(item, "00400009"), _first_value(item, "00401001"))
        )
        if any(pair):
            pairs[pair] = None
    return [list(pair) for pair in pairs][:MAX_REQUEST_ATTRIBUTES]


def _indexed_from_header(
    row: Instance,
    header: dict[str, Any],
    studies: dict[Any, Study],
    series: dict[Any, Series],
) -> bool:
    """Fill the index columns `row`, its study and series lack from `header`, as ingest
    would have (imaging.dicom.parse); True if the instance row changed."""
    study = studies.get(row.study_id, row.study)
    study_id = _first_value(header, "00200010")
    if not study.study_id and isinstance(study_id, str) and study_id.strip():
        study.study_id = study_id.replace("\x00", "").strip()[:16]
        studies[study.pk] = study
    one = series.get(row.series_id, row.series)
    started = _first_value(header, "00400244")
    started_date = date_from_text(started) if isinstance(started, str) else None
    if one.performed_date is None and started_date is not None:
        one.performed_date = started_date
        series[one.pk] = one
    time = _first_value(header, "00400245")
    if not one.performed_time and isinstance(time, str) and time.strip():
        one.performed_time = time.replace("\x00", "").strip()[:16]
        series[one.pk] = one
    if not one.request_attributes and (orders := _request_attributes(header)):
        one.request_attributes = orders
        series[one.pk] = one
    bits = _first_value(header, "00280100")
    if row.bits_allocated is None and isinstance(bits, int) and 0 <= bits <= 64:
        row.bits_allocated = bits
        return True
    return False


def thumbnail_bytes(*, series: Series, actor: Actor) -> bytes | None:
    """The series thumbnail, verified; None if it has none yet.

    A thumbnail rendered again (`rebuild_thumbnails`) replaces its object: one gone
    between reading the row and opening it is read again under the row's new key, not
    reported as an integrity failure.
    """
    if not series.thumbnail_key:
        return None
    with _failures_audited(instance=series, actor=actor):
        try:
            return _thumbnail_plaintext(series)
        except FileNotFoundError:
            moved = (
                Series.objects.for_tenant(series.tenant)
                .filter(pk=series.pk)
                .values_list("thumbnail_key", flat=True)
                .first()
            )
            if not moved or moved == series.thumbnail_key:
                raise  # missing, not replaced: audited as such
            series.thumbnail_key = moved
            return _thumbnail_plaintext(series)


def _thumbnail_plaintext(series: Series) -> bytes:
    storage = storage_for(series.tenant)
    context = ObjectContext(series.tenant_id, series.thumbnail_key)
    with object_open(storage, series.thumbnail_key) as handle:
        return b"".join(
            decrypt_stream(handle.read, key=study_dek(study=series.study), context=context)
        )


class ThumbnailsNotQueued(Exception):
    """The broker did not take every batch of a thumbnail rebuild."""


class SeriesNotFound(LookupError):
    """A series asked for by UID is not the clinic's."""


REBUILD_BATCH = 50


def series_thumbnails_rebuild(
    *, tenant: Tenant, actor: Actor, series_uids: Sequence[str] = (), failed_only: bool = False
) -> int:
    """Queue a clinic's series thumbnails to be rendered again; returns how many.

    For after a change to rendering (palette colour, say): a thumbnail is rendered once,
    so those made before keep the old rendering until then. Every series of the clinic,
    or those named by UID, or only those whose thumbnail failed. Each keeps its present
    thumbnail until the new one is stored. Audited once, as the system's pixel reads
    for thumbnails are not. ThumbnailsNotQueued when the broker took none or only some:
    no periodic job would send them later.
    """
    from imaging.tasks import series_thumbnails

    series = Series.objects.for_tenant(tenant)
    if series_uids:
        series = series.filter(series_uid__in=set(series_uids))
        # The operator's own input, so naming them tells nobody anything new.
        missing = sorted(set(series_uids) - set(series.values_list("series_uid", flat=True)))
        if missing:
            raise SeriesNotFound(f"Not series of this clinic: {', '.join(missing)}.")
    if failed_only:
        series = series.filter(thumbnail_status=Series.ThumbnailStatus.FAILED)
    # Committed before any task is sent: a rebuild tries even those given up on, and a
    # worker may take the first batch at once.
    series.update(thumbnail_attempts=0)
    ids = [str(pk) for pk in series.order_by("created_at", "pk").values_list("pk", flat=True)]
    batches = [ids[start : start + REBUILD_BATCH] for start in range(0, len(ids), REBUILD_BATCH)]
    queued = sum(
        len(batch)
        for batch in batches
        if task_send(
            task=series_thumbnails,
            kwargs={"tenant_id": str(tenant.pk), "series_ids": batch, "replace": True},
        )
    )
    # Recorded after the sending, with what the queue took: an event written before
    # would say every series was rebuilt when the broker took none.
    audit.record(
        actor=actor,
        action=Action.THUMBNAILS_REBUILT,
        target=None,
        tenant=tenant,
        outcome=Outcome.SUCCESS if queued == len(ids) else Outcome.FAILURE,
        detail={"series": len(ids), "queued": queued, "failed_only": failed_only},
    )
    if queued < len(ids):
        raise ThumbnailsNotQueued(
            f"The task queue took {queued} of {len(ids)} series; run this again once it "
            "can be reached."
        )
    return len(ids)


def thumbnails_pending_requeue(*, tenant: Tenant, now: dt.datetime) -> int:
    """Queue again the thumbnails still pending long after their series arrived.

    Their message was lost (a broker that could not be reached when the series
    committed) or its retries were spent. One message per series, so one that keeps
    failing holds up no other; tried for TASK_RECOVER_WITHIN_DAYS. The task does nothing
    for a thumbnail made meanwhile, so a message that was only slow costs a no-op.
    """
    from imaging.tasks import series_thumbnail

    due = now - dt.timedelta(minutes=settings.TASK_RECOVER_AFTER_MINUTES)
    since = now - dt.timedelta(days=settings.TASK_RECOVER_WITHIN_DAYS)
    pending = (
        Series.objects.for_tenant(tenant)
        .filter(thumbnail_status=Series.ThumbnailStatus.PENDING, created_at__range=(since, due))
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
    )
    count = 0
    for series_id in pending:
        task_send_on_commit(
            task=series_thumbnail, kwargs={"tenant_id": str(tenant.pk), "series_id": str(series_id)}
        )
        count += 1
    return count


def orphan_sweep(*, tenant: Tenant, older_than: dt.datetime) -> int:
    """Delete objects no row refers to (left by a crash between write and commit)."""
    storage = storage_for(tenant)
    referenced = set(
        Instance.objects.for_tenant(tenant).values_list("storage_key", flat=True)
    ) | set(
        Series.objects.for_tenant(tenant)
        .exclude(thumbnail_key="")
        .values_list("thumbnail_key", flat=True)
    )
    removed = failed = 0
    for key in object_keys(storage, str(tenant.pk)):
        if key in referenced or not object_key_is_ours(key, tenant=tenant):
            continue
        try:
            if storage.get_modified_time(key) >= older_than:
                continue
            object_delete(storage, key)
        except (FileNotFoundError, NotImplementedError):
            continue
        except Exception as exc:  # any backend's error: one object must not stop the rest
            failed += 1
            logger.warning("orphan sweep could not remove %s: %s", key, type(exc).__name__)
            continue
        removed += 1
    if failed:
        logger.error(
            "orphan sweep of tenant %s left %s object(s) it could not remove", tenant.pk, failed
        )
    return removed


# --- Study actions -------------------------------------------------------------------


def study_set_confidential(
    *,
    study: Study,
    confidential: bool,
    by: User,
    actor: Actor,
    now: dt.datetime | None = None,
) -> int:
    """Mark a study confidential (or not); returns how many share links that revoked.

    Whoever marks it keeps access by an explicit grant. Marking it revokes the live
    links staff and partners made to it (`shares_revoke_for_confidential_study`);
    removing the mark brings none back. `now` is the caller's clock (None: now, for
    callers written before it was asked for).
    """
    # Sharing builds on imaging, so it is imported here, not at the top.
    from sharing.services import shares_lock_live, shares_revoke_for_confidential_study

    now = now or timezone.now()
    revoked = 0
    with transaction.atomic():
        # The conditional UPDATE holds the study's row until commit: a link being made
        # meanwhile commits first (and is revoked below) or sees the mark and is refused.
        changed = (
            Study.objects.for_tenant(study.tenant)
            .filter(pk=study.pk)
            .exclude(confidential=confidential)
            .update(confidential=confidential)
        )
        study.confidential = confidential
        if changed and confidential:
            shares_lock_live(tenant=study.tenant, study=study)  # before the first audit write
        if changed:
            audit.record(
                actor=actor,
                action=Action.STUDY_CONFIDENTIALITY_CHANGED,
                target=study,
                tenant=study.tenant,
                detail={"confidential": confidential},
            )
            if confidential:
                revoked = shares_revoke_for_confidential_study(study=study, actor=actor, now=now)
        if confidential and not object_granted(
            tenant=study.tenant, user=by, perm=STUDY_VIEW_PERM, obj=study
        ):
            object_grant(tenant=study.tenant, user=by, perm=STUDY_VIEW_PERM, obj=study, actor=actor)
    return revoked


class PatientDetailsChanged(Exception):
    """Files with other patient details arrived after the confirming page was shown."""


def study_patient_confirm(*, study: Study, actor: Actor, seen: int) -> bool:
    """Confirm that a held study, whose images give other patient details than its
    record, belongs to that record; it is then shown in the patient portal again.

    `seen` is how many differing sets of details the confirming page showed
    (`len(patient_headers)`); a set that arrived since raises PatientDetailsChanged
    and nothing is confirmed. False if it was not held (confirmed meanwhile). A later
    file giving yet another set of details holds it again.
    """
    with transaction.atomic():
        current = (
            Study.objects.for_tenant(study.tenant).select_for_update().filter(pk=study.pk).first()
        )
        if current is None or not current.patient_held:
            return False
        if len(current.patient_headers) != seen:
            raise PatientDetailsChanged
        current.patient_held = False
        current.save(update_fields=["patient_held"])
        study.patient_held = False
        audit.record(
            actor=actor,
            action=Action.STUDY_PATIENT_CONFIRMED,
            target=study,
            tenant=study.tenant,
            detail={"fields": current.patient_differs, "sets": seen},
        )
    return True


def study_grant(*, study: Study, grantee: User, download: bool, actor: Actor) -> None:
    """Let a member (a referring physician) view, and optionally download, one study."""
    tenant = study.tenant
    with transaction.atomic():
        object_grant(tenant=tenant, user=grantee, perm=STUDY_VIEW_PERM, obj=study, actor=actor)
        if download:
            object_grant(
                tenant=tenant, user=grantee, perm=STUDY_DOWNLOAD_PERM, obj=study, actor=actor
            )
        elif object_granted(tenant=tenant, user=grantee, perm=STUDY_DOWNLOAD_PERM, obj=study):
            object_revoke(
                tenant=tenant, user=grantee, perm=STUDY_DOWNLOAD_PERM, obj=study, actor=actor
            )


@dataclass(frozen=True)
class GrantWithdrawn:
    """What withdrawing a grant did to the member's live links to the study."""

    still_opens: bool
    revoked: int = 0
    shortened: int = 0


def study_grant_revoke(
    *, study: Study, grantee: User, actor: Actor, now: dt.datetime | None = None
) -> GrantWithdrawn:
    """Withdraw a member's grant on a study, and bring their links to it into line.

    A link passes on its maker's access and must not outlive it: when the grant was
    what let the member see the study (a confidential study, a referring physician's),
    the live links they made of it are revoked; when break-glass is all that is left,
    they end with it. Each change is audited. A member whose role lists the study
    anyway keeps theirs.
    """
    from sharing.selectors import break_glass_sole_grant
    from sharing.services import (
        shares_end_with_break_glass,
        shares_lock_live,
        shares_revoke_for_withdrawn_grant,
    )

    now = now or timezone.now()
    tenant = study.tenant
    with transaction.atomic():
        # share_create locks the study's row too and asks for the maker's access under
        # it: a link made meanwhile commits first (and is dealt with here) or is refused.
        Study.objects.for_tenant(tenant).select_for_update().filter(pk=study.pk).exists()
        shares_lock_live(tenant=tenant, study=study, created_by=grantee)  # before any audit
        for perm in (STUDY_DOWNLOAD_PERM, STUDY_VIEW_PERM):
            if object_granted(tenant=tenant, user=grantee, perm=perm, obj=study):
                object_revoke(tenant=tenant, user=grantee, perm=perm, obj=study, actor=actor)
        membership = membership_for_user(tenant=tenant, user=grantee)
        if (
            membership is None
            or not study_access(membership=membership, study=study, now=now).details
        ):
            return GrantWithdrawn(
                still_opens=False,
                revoked=shares_revoke_for_withdrawn_grant(
                    study=study, user=grantee, actor=actor, now=now
                ),
            )
        glass = break_glass_sole_grant(membership=membership, study=study, now=now)
        if glass is None:
            return GrantWithdrawn(still_opens=True)
        return GrantWithdrawn(
            still_opens=True,
            shortened=shares_end_with_break_glass(
                study=study, user=grantee, grant=glass, actor=actor, now=now
            ),
        )
