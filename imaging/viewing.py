"""Viewer sessions: opening a study in the viewer, and auditing pixel reads per series.

A viewer fetches hundreds of frames; one audit row per frame would bury the events a
privacy officer looks for. Reads made under a viewer session are audited once per
series instead (the first read writes the event, a unique row makes concurrent
prefetches agree). Reads without a valid viewer session are audited one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction

import audit
from audit.actors import Actor, Target
from audit.models import Action, Outcome
from imaging.models import Instance, Series, Study, ViewerSeriesView, ViewerSession
from tenants.models import Tenant, User

if TYPE_CHECKING:
    from sharing.models import ShareLink


def viewer_session_open(
    *, tenant: Tenant, user: User, study: Study, actor: Actor, break_glass: str | None = None
) -> ViewerSession:
    """Open a sitting at the viewer; `break_glass`, the grant the access rests on, if any
    (its session's reads are then tied to the grant a privacy officer reviews)."""
    detail = {"break_glass": break_glass} if break_glass is not None else {}
    with transaction.atomic():
        session = ViewerSession.objects.create(tenant=tenant, user=user, study=study)
        audit.record(
            actor=actor,
            action=Action.VIEWER_OPENED,
            target=study,
            tenant=tenant,
            detail={**detail, "viewer_session": str(session.pk)},
        )
    return session


def _read_target(
    series: list[Series], detail: dict[str, Any]
) -> tuple[Series | Target | None, dict[str, Any]]:
    """What a read is recorded against: its one series, else its study with the list of
    series (so it shows in the study's access history), else the studies and series."""
    if len(series) == 1:
        return series[0], detail
    detail = {**detail, "series": [str(s.pk) for s in series]}
    studies = sorted({str(s.study_id) for s in series})
    if len(studies) > 1:
        return None, {**detail, "studies": studies}
    return Target(type=Study._meta.label_lower, id=studies[0]), detail


def pixel_read_audit(
    *,
    tenant: Tenant,
    actor: Actor,
    viewer_session: ViewerSession | None,
    series: Iterable[Series],
    detail: dict[str, Any],
) -> None:
    """Audit a read of pixels or metadata of `series`."""
    series = list(series)
    in_session = viewer_session is not None and all(
        s.study_id == viewer_session.study_id for s in series
    )
    if not in_session:
        target, detail = _read_target(series, detail)
        audit.record(
            actor=actor,
            action=Action.DICOMWEB_RETRIEVE,
            target=target,
            tenant=tenant,
            detail=detail,
        )
        return
    seen = set(
        ViewerSeriesView.objects.for_tenant(tenant)
        .filter(viewer_session=viewer_session, series__in=[s.pk for s in series])
        .values_list("series_id", flat=True)
    )
    # Most reads of a viewer session are of series already audited: a read, no write.
    for one in (s for s in series if s.pk not in seen):
        with transaction.atomic():
            try:
                with transaction.atomic():
                    ViewerSeriesView.objects.create(
                        tenant=tenant, viewer_session=viewer_session, series=one
                    )
            except IntegrityError:
                continue  # already audited under this viewer session
            audit.record(
                actor=actor,
                action=Action.SERIES_VIEWED,
                target=one,
                tenant=tenant,
                detail={"viewer_session": str(viewer_session.pk), "study": str(one.study_id)},
            )


def viewer_session_open_for_share(*, share: ShareLink, actor: Actor) -> ViewerSession:
    with transaction.atomic():
        session = ViewerSession.objects.create(
            tenant=share.tenant, share=share, study_id=share.study_id
        )
        audit.record(
            actor=actor,
            action=Action.VIEWER_OPENED,
            target=share.study,
            tenant=share.tenant,
            detail={"viewer_session": str(session.pk), "share": str(share.pk)},
        )
    return session


def pixel_read_unserved_audit(
    *, tenant: Tenant, actor: Actor, instance: Instance, detail: dict[str, Any]
) -> None:
    """Audit that a read audited as it started sent nothing (the frame could not be decoded).

    The read's own event says pixels were asked for and decrypted; this one, after it in
    the chain, says none left the server, so the log does not overstate what was seen.
    """
    audit.record(
        actor=actor,
        action=Action.DICOMWEB_RETRIEVE,
        target=instance,
        tenant=tenant,
        outcome=Outcome.FAILURE,
        detail=detail,
    )
