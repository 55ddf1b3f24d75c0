"""Who is calling DICOMweb, and what they may reach.

The same PS3.18 views serve two channels, each wrapping them with one decorator that
sets `request.dicomweb` (a `DicomwebClient`):

- `/dicomweb/`: partners with `Authorization: Bearer <token>`; the clinic comes from
  the token, reads need `dicomweb:read`, STOW-RS needs `dicomweb:write`.
- `/t/<slug>/dicomweb/`: the portal's own viewer, for a signed-in member; read-only,
  limited to the studies whose images the member may see, cookies plus the same-site
  session (GET only, so nothing to forge).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from audit.actors import Actor, client_ip
from imaging.models import Series, Study, ViewerSession
from imaging.selectors import studies_downloadable, studies_with_images
from portal.denials import access_denied_record
from sharing.selectors import own_studies
from tenants.mfa import confirmed_devices, step_up_is_fresh
from tenants.models import ApiToken, Tenant
from tenants.roles import Perm
from tenants.sessions import STARTED_AT
from tenants.tokens import (
    CREDENTIAL_REQUIRED_TEXT,
    TOKEN_RATE_LIMITED_TEXT,
    TokenRefused,
    api_token_rate_limited,
    api_token_verify,
    token_scope_refusal,
)

VIEWER_SESSION_HEADER = "X-Viewer-Session"
VIEWER_SESSION_PARAM = "vs"  # for <img> elements, which cannot send headers
# One sitting at the viewer; past it, reads are audited one by one again.
VIEWER_SESSION_MAX_AGE = dt.timedelta(hours=12)


@dataclass(frozen=True)
class DicomwebClient:
    tenant: Tenant
    actor: Actor
    # None: every study of the clinic. Otherwise only these (and these series).
    studies: QuerySet[Study] | None = None
    series: QuerySet[Series] | None = None
    viewer_session: ViewerSession | None = None
    may_store: bool = False
    # Set for de-identified share links: metadata and objects carry this pseudonym.
    pseudonym: str | None = None
    # False for a partner's token without confidential:read: confidential studies are
    # then absent (searches) or missing (404), as another clinic's are.
    confidential: bool = True


def dicomweb_error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _refused(request: HttpRequest, tenant: Tenant, actor: Actor, reason: str) -> JsonResponse:
    """The 403 for a caller the clinic knows, recorded on its audit log."""
    access_denied_record(request=request, tenant=tenant, actor=actor, reason=reason)
    return dicomweb_error(403, reason)


def bearer_token(
    view: Callable[..., HttpResponse], *, name: str = ""
) -> Callable[..., HttpResponse]:
    """Authenticate `Authorization: Bearer <token>` and set the clinic from it.

    Token requests carry no cookies and no session, so CSRF does not apply.
    """

    @csrf_exempt
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not credential:
                raise TokenRefused(CREDENTIAL_REQUIRED_TEXT)
            token = api_token_verify(raw=credential, now=timezone.now(), ip=client_ip(request))
        except TokenRefused as exc:
            return dicomweb_error(401, exc.message, WWW_Authenticate='Bearer realm="dicomweb"')
        # Counted first: a token refused for its scope is refused (and audited) within
        # its budget too, not as often as it can ask.
        if api_token_rate_limited(token=token, now=timezone.now()):
            return dicomweb_error(429, TOKEN_RATE_LIMITED_TEXT, Retry_After="60")
        scope = "dicomweb:write" if request.method == "POST" else "dicomweb:read"
        if not token.has_scope(scope):
            return _refused(
                request,
                token.tenant,
                Actor.for_token(token, ip=client_ip(request)),
                token_scope_refusal(token, scope),
            )
        request.tenant = token.tenant  # type: ignore[attr-defined]
        request.api_token = token  # type: ignore[attr-defined]
        request.dicomweb = DicomwebClient(  # type: ignore[attr-defined]
            tenant=token.tenant,
            actor=Actor.for_token(token, ip=client_ip(request)),
            may_store=True,
            confidential=token.has_scope(ApiToken.Scope.CONFIDENTIAL_READ),
        )
        return view(request, *args, **kwargs)

    return wrapped


def _viewer_session(
    request: HttpRequest, tenant: Tenant, *, name: str, opened_after: dt.datetime, **owner: Any
) -> ViewerSession | None:
    """The viewer session the request names, if `owner` (a user or a share) opened it
    after `opened_after` and within VIEWER_SESSION_MAX_AGE.

    Another person's id, an old one (from a browser history, a thumbnail URL) or one of
    an earlier sign-in is ignored, and the reads are then audited one by one: a viewer
    session only stands for one sitting at the viewer. Whole objects and bulk data
    (route `name`) are never read under one: they are originals taken away, each audited
    as a retrieve with what it held, not folded into the series' first view.
    """
    if name in DOWNLOAD_ROUTES:
        return None
    raw = request.headers.get(VIEWER_SESSION_HEADER) or request.GET.get(VIEWER_SESSION_PARAM, "")
    try:
        session_id = uuid.UUID(raw)
    except ValueError:
        return None
    since = max(opened_after, timezone.now() - VIEWER_SESSION_MAX_AGE)
    return (
        ViewerSession.objects.for_tenant(tenant)
        .filter(pk=session_id, created_at__gte=since, **owner)
        .first()
    )


def _signed_in_at(request: HttpRequest) -> dt.datetime:
    started = request.session.get(STARTED_AT)
    if not isinstance(started, int | float):
        return timezone.now()  # no recorded sign-in: no viewer session counts
    return dt.datetime.fromtimestamp(started, tz=dt.UTC)


# Routes that send original objects or their binary values rather than images to view.
DOWNLOAD_ROUTES = frozenset({"study", "series_retrieve", "instance", "bulkdata"})
DOWNLOAD_STEP_UP = (
    "Downloading original images needs a recent second-factor check: use Download on the "
    "study's page, which asks for it."
)


def _download_step_up_fresh(request: HttpRequest, membership: Any) -> bool:
    # As the study page's download (staff: always) and the patient portal's (patients:
    # when they have a second factor to re-verify).
    if membership.has_perm(Perm.IMAGES_VIEW) or confirmed_devices(request.user):
        return step_up_is_fresh(request)
    return True


def signed_in_member(
    view: Callable[..., HttpResponse], *, name: str = ""
) -> Callable[..., HttpResponse]:
    """The clinic's own viewer: a member with `images.view` (or a patient, for their own
    studies), read-only, within the studies they may see."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tenant = getattr(request, "tenant", None)
        membership = getattr(request, "membership", None)
        if tenant is None or membership is None:
            return dicomweb_error(404, "Not found.")
        if request.method not in ("GET", "HEAD"):
            return dicomweb_error(
                405,
                "The viewer's DICOMweb is read-only; upload on the Upload page.",
                Allow="GET, HEAD",
            )
        if not membership.has_perm(Perm.IMAGES_VIEW) and not membership.has_perm(Perm.OWN_STUDIES):
            return _refused(
                request,
                tenant,
                Actor.from_request(request),
                "Your role in this clinic does not include images.",
            )
        if name in DOWNLOAD_ROUTES:
            # Whole objects and bulk data are the originals taken away (the viewer reads
            # metadata and frames only): what the study page's Download button gives,
            # to whom it gives it, after the same second-factor check.
            if not _download_step_up_fresh(request, membership):
                return _refused(request, tenant, Actor.from_request(request), DOWNLOAD_STEP_UP)
            select = studies_downloadable
        else:
            select = studies_with_images
        studies = select(membership=membership, now=timezone.now())
        if membership.has_perm(Perm.OWN_STUDIES):
            # A patient reads their own studies here too (the patient portal's viewer).
            studies = Study.objects.for_tenant(tenant).filter(
                Q(pk__in=studies.values("pk"))
                | Q(pk__in=own_studies(membership=membership).values("pk"))
            )
        request.dicomweb = DicomwebClient(  # type: ignore[attr-defined]
            tenant=tenant,
            actor=Actor.from_request(request),
            studies=studies,
            viewer_session=_viewer_session(
                request, tenant, name=name, opened_after=_signed_in_at(request), user=request.user
            ),
        )
        return view(request, *args, **kwargs)

    return wrapped


# Routes a share recipient may use: viewing needs metadata, frames, rendered images and
# thumbnails; whole objects, and bulk data (any binary value, reports included), only
# when the link allows download; never a search.
SHARE_VIEW_ROUTES = frozenset(
    {
        "study_metadata",
        "series_metadata",
        "instance_metadata",
        "frames",
        "instance_rendered",
        "frame_rendered",
        "study_thumbnail",
        "series_thumbnail",
        "study_access",
    }
)
SHARE_DOWNLOAD_ROUTES = DOWNLOAD_ROUTES


def share_recipient(
    view: Callable[..., HttpResponse], *, name: str = ""
) -> Callable[..., HttpResponse]:
    """A share link's recipient: read-only, its one study (or series), checked per request."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        from sharing.recipient import (
            RecipientSessionEnded,
            recipient_end,
            recipient_hold_began,
            recipient_share,
        )
        from sharing.selectors import share_series
        from sharing.services import ShareUnavailable, share_actor

        if request.method not in ("GET", "HEAD"):
            return dicomweb_error(405, "A shared study is read-only.", Allow="GET, HEAD")
        now = timezone.now()
        try:
            share, verified = recipient_share(request, now=now, ip=client_ip(request))
        except RecipientSessionEnded:
            return dicomweb_error(401, "Your time with this link ran out; open the link again.")
        except ShareUnavailable as exc:
            # Let go of the link, as the recipient's pages do: the refusal is audited
            # once, not again on each of an open viewer's later requests.
            recipient_end(request)
            message = "This share link has expired." if exc.status == 410 else "Not found."
            return dicomweb_error(exc.status if exc.status != 403 else 404, message)
        if share is None or not verified:
            return dicomweb_error(401, "Open the share link (and answer its challenge) first.")
        allowed = SHARE_VIEW_ROUTES | (SHARE_DOWNLOAD_ROUTES if share.allow_download else set())
        if name not in allowed:
            return dicomweb_error(404, "Not found.")
        request.dicomweb = DicomwebClient(  # type: ignore[attr-defined]
            tenant=share.tenant,
            actor=share_actor(share, ip=client_ip(request)),
            studies=Study.objects.for_tenant(share.tenant).filter(pk=share.study_id),
            series=share_series(share=share),
            viewer_session=_viewer_session(
                request,
                share.tenant,
                name=name,
                opened_after=recipient_hold_began(request),
                share=share,
            ),
            pseudonym=share.pseudonym,
        )
        return view(request, *args, **kwargs)

    return wrapped
