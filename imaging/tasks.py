"""Background work on stored images. Thin: load ids, call the service, record the result."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.actors import Actor
from imaging.crypto import IntegrityError, ObjectContext, encrypt_bytes
from imaging.keyring import study_dek
from imaging.models import Instance, Series
from imaging.render import RenderError, thumbnail_png
from imaging.services import instance_bytes, orphan_sweep, thumbnails_pending_requeue
from imaging.storage import object_delete_quietly, object_key_new, object_write, storage_for
from portal.tasks import portal_task, task_send
from tenants.models import Tenant

logger = logging.getLogger(__name__)
SYSTEM = Actor.system("imaging.tasks")
GAVE_UP = (
    "Rendering was cut off too many times (its worker stopped: out of memory, a decoder "
    "crash or the time limit); not tried again until the thumbnails are rebuilt."
)


# Past the limit Celery ends the worker process and acknowledges the message: the series
# stays pending, the recovery job sends it again later, and the render cut off counts
# towards THUMBNAIL_MAX_ATTEMPTS.
@portal_task(
    max_retries=3, autoretry_for=(OSError,), time_limit=settings.THUMBNAIL_TIME_LIMIT_SECONDS
)
def series_thumbnail(*, tenant_id: str, series_id: str, replace: bool = False) -> str:
    """Render and store the series thumbnail once; safe to run again or concurrently.

    `replace` renders it again even when there is one (after a change to rendering).
    """
    return _series_thumbnail(tenant_id=tenant_id, series_id=series_id, replace=replace)


@portal_task(max_retries=3, bind=True)
def series_thumbnails(
    self: Any, *, tenant_id: str, series_ids: list[str], replace: bool = False
) -> int:
    """Send one `series_thumbnail` message per series of a batch (a STOW-RS batch's new
    series, or a rebuild's); returns how many were sent.

    One message each, not the renders here: each render then has its own time limit,
    and one that hangs or crashes its worker is cut off and counted alone. Rendering a
    batch in one task had no limit at all (one for up to 50 series would drop the rest),
    so a hung decoder held its worker for good and the broker handed the batch to one
    more worker every visibility timeout. Those that could not be sent are retried.
    """
    unsent = [
        series_id
        for series_id in series_ids
        if not task_send(
            task=series_thumbnail,
            kwargs={"tenant_id": tenant_id, "series_id": series_id, "replace": replace},
        )
    ]
    if unsent:
        raise self.retry(kwargs={"tenant_id": tenant_id, "series_ids": unsent, "replace": replace})
    return len(series_ids)


def _series_thumbnail(*, tenant_id: str, series_id: str, replace: bool = False) -> str:
    series = (
        Series.objects.filter(tenant_id=tenant_id, pk=series_id)
        .select_related("tenant", "study")
        .first()
    )
    if series is None or (series.thumbnail_status == Series.ThumbnailStatus.READY and not replace):
        return "skipped"
    previous_key = series.thumbnail_key
    instances = list(
        Instance.objects.filter(tenant_id=tenant_id, series=series)
        .select_related("tenant", "study")
        .defer("metadata", "pixel_layout")  # one object is read; its row needs neither
        .order_by("instance_number", "created_at")
    )
    if not instances:
        return "skipped"
    middle = instances[len(instances) // 2]
    if _render_begun(tenant_id=tenant_id, series_id=series_id) > settings.THUMBNAIL_MAX_ATTEMPTS:
        return _failed(tenant_id=tenant_id, series_id=series_id, error=GAVE_UP, kind="gave_up")
    try:
        png = thumbnail_png(instance_bytes(instance=middle, actor=SYSTEM))
    except (RenderError, IntegrityError) as exc:  # an integrity failure is audited there
        _render_ended(tenant_id=tenant_id, series_id=series_id)
        return _failed(
            tenant_id=tenant_id, series_id=series_id, error=str(exc), kind=type(exc).__name__
        )
    except Exception:  # storage or key service down: retried, and no render was cut off
        _render_ended(tenant_id=tenant_id, series_id=series_id)
        raise
    _render_ended(tenant_id=tenant_id, series_id=series_id)
    if settings.PORTAL_FAULT_THUMBNAIL_DELAY_SECONDS:
        logger.info("thumbnail for series %s: fault-injection pause", series_id)
        time.sleep(settings.PORTAL_FAULT_THUMBNAIL_DELAY_SECONDS)
    storage = storage_for(series.tenant)
    key = object_key_new(series.tenant)
    object_write(
        storage,
        key,
        [
            encrypt_bytes(
                png, key=study_dek(study=series.study), context=ObjectContext(series.tenant_id, key)
            )
        ],
    )
    with transaction.atomic():
        # Only the first writer over the key it read wins; a duplicate run removes its
        # own copy.
        won = Series.objects.filter(
            tenant_id=tenant_id, pk=series_id, thumbnail_key=previous_key
        ).update(
            thumbnail_key=key,
            thumbnail_status=Series.ThumbnailStatus.READY,
            thumbnail_error="",
            thumbnail_attempts=0,
        )
    if not won:
        object_delete_quietly(storage, key)
        return "skipped"
    if previous_key and not object_delete_quietly(storage, previous_key):
        logger.warning("replaced thumbnail %s not removed; the orphan sweep will", previous_key)
    return "ready"


def _render_begun(*, tenant_id: str, series_id: str) -> int:
    """Count a render of the series as begun, committed before it starts, and return
    how many were begun and never ended: a worker killed midway leaves its count behind.
    """
    rows = Series.objects.filter(tenant_id=tenant_id, pk=series_id)
    with transaction.atomic():
        rows.update(thumbnail_attempts=F("thumbnail_attempts") + 1)
        return rows.values_list("thumbnail_attempts", flat=True).get()


def _render_ended(*, tenant_id: str, series_id: str) -> None:
    """The render returned or raised: it did not take its worker down with it."""
    Series.objects.filter(tenant_id=tenant_id, pk=series_id, thumbnail_attempts__gt=0).update(
        thumbnail_attempts=F("thumbnail_attempts") - 1
    )


def _failed(*, tenant_id: str, series_id: str, error: str, kind: str) -> str:
    rows = Series.objects.filter(tenant_id=tenant_id, pk=series_id)
    rows.filter(thumbnail_key="").update(
        thumbnail_status=Series.ThumbnailStatus.FAILED, thumbnail_error=error[:256]
    )
    # A thumbnail that cannot be rendered again keeps the one it has; the error says
    # why it was not replaced.
    rows.exclude(thumbnail_key="").update(thumbnail_error=f"Not rendered again: {error}"[:256])
    logger.warning("thumbnail for series %s failed: %s", series_id, kind)
    return "failed"


@portal_task(max_retries=0)
def thumbnails_pending_requeue_all() -> int:
    """Beat entry point: in every clinic, queue again the thumbnails whose message was lost."""
    now = timezone.now()
    tenants = Tenant.objects.order_by("pk")
    return sum(thumbnails_pending_requeue(tenant=tenant, now=now) for tenant in tenants)


@portal_task(max_retries=0)
def orphan_objects_sweep(*, tenant_id: str, grace_minutes: int = 60) -> int:
    tenant = Tenant.objects.get(pk=tenant_id)
    return orphan_sweep(
        tenant=tenant, older_than=timezone.now() - dt.timedelta(minutes=grace_minutes)
    )


@portal_task(max_retries=0)
def orphan_objects_sweep_all() -> int:
    """Beat entry point: one sweep task per clinic."""
    tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        orphan_objects_sweep.delay(tenant_id=str(tenant_id))
    return len(tenant_ids)
