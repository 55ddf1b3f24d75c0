"""Share links: the sharer's pages (create, list, access log, revoke) and the recipient's."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

import audit
from audit.actors import Actor, client_ip
from audit.models import Action, ActorType
from audit.selectors import actor_labels, event_list
from imaging.archive import study_zip, zip_response
from imaging.models import Series
from imaging.selectors import (
    instances_for_download,
    series_for_study,
    series_with_identifying_pixels,
    study_access,
)
from imaging.viewing import viewer_session_open_for_share
from imaging.views.study import study_for_request
from imaging.views.viewer import viewer_context
from sharing.forms import ChallengeForm, ShareForm
from sharing.models import ShareLink
from sharing.recipient import (
    RecipientSessionEnded,
    recipient_begin,
    recipient_end,
    recipient_holds_another,
    recipient_holds_verified,
    recipient_share,
    recipient_verified,
)
from sharing.selectors import (
    SHARE_OVERSIGHT_PERM,
    break_glass_sole_grant,
    share_get,
    share_list,
    share_list_live,
    share_masked_study_ids,
    share_series,
    share_series_withheld,
)
from sharing.services import (
    HELD,
    ShareInvalid,
    ShareUnavailable,
    share_actor,
    share_check_secret,
    share_create,
    share_lookup,
    share_openable,
    share_revoke,
    share_touch,
    share_use,
)
from tenants.access import check_clinic_perm, require_perm
from tenants.mfa import require_step_up
from tenants.models import Membership, Tenant
from tenants.roles import STAFF_ROLES, Perm
from tenants.throttle import too_many_lookups

# --- The sharer's pages ------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def share_new(request: HttpRequest, study_id: uuid.UUID) -> HttpResponse:
    check_clinic_perm(request, Perm.STUDY_SHARE)
    study, access = study_for_request(request, study_id)
    if not access.details:
        raise PermissionDenied("Open the study first.")
    return _share_new(request, study)


def _series_label(series: Series) -> str:
    # "Series 2 · CT · Axial", leaving out what the series does not say.
    return " · ".join(
        filter(None, [f"Series {series.series_number or '?'}", series.modality, series.description])
    )


@require_step_up
def _share_new(request: HttpRequest, study) -> HttpResponse:
    return share_form_page(request, study, form_class=ShareForm)


def share_form_page(
    request: HttpRequest,
    study,
    *,
    form_class: type[ShareForm],
    back_url: str = "",
    as_patient: bool = False,
) -> HttpResponse:
    """The create-a-link form and its result, for staff and for patients (their own form,
    `as_patient`). The link may not outlive the sharer's access (`share_create`)."""
    tenant = request.tenant
    membership = request.membership  # type: ignore[attr-defined]
    # Access that rests on break-glass alone ends with it, and so does any link made from
    # it: the form says so before the link is made (share_create decides again).
    break_glass = (
        None
        if as_patient
        else break_glass_sole_grant(membership=membership, study=study, now=timezone.now())
    )
    series = [s for s in series_for_study(study=study) if s.num_instances]
    choices = [(str(s.pk), _series_label(s)) for s in series]
    may_download = (
        as_patient or study_access(membership=membership, study=study, now=timezone.now()).download
    )
    form = form_class(
        request.POST or None,
        series=choices,
        max_days=tenant.share_link_max_days,
        may_download=may_download,
        initial={"expires_days": tenant.share_link_default_days, "challenge": "pin"},
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        now = timezone.now()
        asked = now + dt.timedelta(days=data["expires_days"])
        try:
            share, token = share_create(
                study=study,
                actor=_actor(request),
                now=now,
                membership=membership,
                series=[s for s in series if str(s.pk) in data["series"]],
                expires_at=asked,
                challenge=data["challenge"],
                pin=data["pin"] or None,
                max_uses=data["max_uses"],
                allow_download=data.get("allow_download", False),
                deidentify=data.get("deidentify", False),
                recipient_email=data["recipient_email"],
                message=data["message"],
                notify_on_first_open=data["notify_on_first_open"],
                as_patient=as_patient,
            )
        except ShareInvalid as exc:
            form.add_error(None, str(exc))
        else:
            # The only time the link is shown: it is not stored and cannot be shown again.
            return render(
                request,
                "sharing/created.html",
                {
                    "share": share,
                    "url": request.build_absolute_uri(f"/s/{token}"),
                    "back_url": back_url,
                    "asked_expires_at": asked if share.expires_at < asked else None,
                },
            )
    status = 400 if request.method == "POST" else 200
    # The form names the patient and the study.
    audit.record(
        actor=_actor(request),
        action=Action.STUDY_VIEWED,
        target=study,
        tenant=tenant,
        detail={
            "page": "share_form",
            **({"break_glass": str(break_glass.pk)} if break_glass else {}),
        },
    )
    identifying = (
        [s for s in series_with_identifying_pixels(study=study) if s.num_instances]
        if "deidentify" in form.fields
        else []
    )
    return render(
        request,
        "sharing/new.html",
        {
            "study": study,
            "form": form,
            "back_url": back_url,
            "break_glass": break_glass,
            "identifying": identifying,
        },
        status=status,
    )


def _actor(request: HttpRequest) -> Actor:
    return Actor.from_request(request)


# Links of a sharer over the years, or every live link of a busy clinic: a page at a
# time, like the worklist and the audit log, and each page audited for what it showed.
LINKS_PAGE_SIZE = 50


def _links_page(request: HttpRequest, shares: QuerySet[ShareLink]) -> tuple[Page, list[ShareLink]]:
    page = Paginator(shares, LINKS_PAGE_SIZE).get_page(request.GET.get("page"))
    return page, list(page.object_list)


@require_perm(Perm.STUDY_SHARE, Perm.OWN_STUDIES)
def share_index(request: HttpRequest) -> HttpResponse:
    membership = request.membership  # type: ignore[attr-defined]
    page, links = _links_page(request, share_list(membership=membership))
    now = timezone.now()
    masked = share_masked_study_ids(membership=membership, shares=links, now=now)
    _shares_listed(request, links)
    return render(
        request,
        "sharing/list.html",
        {
            "page": page,
            "rows": [
                {"share": s, "state": s.state_at(now), "masked": s.study_id in masked}
                for s in links
            ],
        },
    )


def _shares_listed(request: HttpRequest, links: list[ShareLink], **detail: str) -> None:
    # Names, dates and recipients' addresses are shown: which links and studies, as the
    # worklist records its pages.
    audit.record(
        actor=_actor(request),
        action=Action.SHARES_LISTED,
        target=None,
        tenant=request.tenant,
        detail={
            **detail,
            "shares": [str(s.pk) for s in links],
            "studies": list(dict.fromkeys(str(s.study_id) for s in links)),
        },
    )


@require_perm(SHARE_OVERSIGHT_PERM)
def share_oversight(request: HttpRequest) -> HttpResponse:
    """Every live link of the clinic, whoever made it, for the member who oversees them."""
    membership = request.membership  # type: ignore[attr-defined]
    now = timezone.now()
    page, links = _links_page(request, share_list_live(membership=membership, now=now))
    masked = share_masked_study_ids(membership=membership, shares=links, now=now)
    staff_ids = _staff_ids(request.tenant, {s.created_by_id for s in links if s.created_by_id})
    _shares_listed(request, links, scope="clinic")
    return render(
        request,
        "sharing/oversight.html",
        {
            "page": page,
            "rows": [
                {
                    "share": s,
                    "state": s.state_at(now),
                    "masked": s.study_id in masked,
                    "creator": _creator(s, staff_ids),
                }
                for s in links
            ],
        },
    )


PATIENT_LABEL = "The patient (patient portal)"


def _staff_ids(tenant: Tenant, user_ids: Iterable[object]) -> set[str]:
    """Which of `user_ids` are the clinic's staff: a patient's address is PHI, which
    the member overseeing links (the privacy officer) is not shown."""
    return {
        str(user_id)
        for user_id in Membership.objects.for_tenant(tenant)
        .filter(user_id__in=list(user_ids), roles__code__in=STAFF_ROLES)
        .values_list("user_id", flat=True)
    }


def _role_labels(tenant: Tenant, user_ids: Iterable[str]) -> dict[str, str]:
    """Each member's roles, as a patient sees who acted: a role, never a name."""
    memberships = (
        Membership.objects.for_tenant(tenant)
        .filter(user_id__in=list(user_ids))
        .prefetch_related("roles")
    )
    return {
        str(m.user_id): ", ".join(sorted(r.name for r in m.roles.all())) or "Clinic staff"
        for m in memberships
    }


def _creator(share: ShareLink, staff_ids: set[str]) -> str:
    if share.created_by_token_id is not None:
        return f"API token “{share.created_by_token.name}”"
    if share.created_by_id is not None:
        return share.created_by.email if str(share.created_by_id) in staff_ids else PATIENT_LABEL
    return "—"


def _member_share(request: HttpRequest, share_id: uuid.UUID) -> ShareLink:
    """A link the member made, or any link of the clinic for one who oversees them."""
    check_clinic_perm(request, Perm.STUDY_SHARE, Perm.OWN_STUDIES, SHARE_OVERSIGHT_PERM)
    share = share_get(membership=request.membership, share_id=share_id)  # type: ignore[attr-defined]
    if share is None:
        raise Http404("No such share link")
    return share


# What was done to a link, beside what its recipients did with it.
_LINK_HISTORY_ACTIONS = [Action.SHARE_CREATED, Action.SHARE_SHORTENED, Action.SHARE_REVOKED]


@never_cache
def share_detail(request: HttpRequest, share_id: uuid.UUID) -> HttpResponse:
    share = _member_share(request, share_id)
    membership = request.membership  # type: ignore[attr-defined]
    now = timezone.now()
    masked = share.study_id in share_masked_study_ids(
        membership=membership, shares=[share], now=now
    )
    events = list(
        event_list(tenant=request.tenant).filter(
            Q(actor_type=ActorType.SHARE_LINK, actor_id=str(share.pk))
            | Q(action__in=_LINK_HISTORY_ACTIONS, detail__share=str(share.pk))
        )[:200]
    )
    labels = actor_labels(tenant=request.tenant, events=events)
    mine = share.created_by_id == membership.user_id
    if not mine:  # overseeing another's link: patients are not named
        users = {key[1] for key in labels if key[0] == ActorType.USER}
        users |= {str(share.created_by_id)} if share.created_by_id else set()
        staff_ids = _staff_ids(request.tenant, users)
        labels = {
            key: PATIENT_LABEL if key[0] == ActorType.USER and key[1] not in staff_ids else label
            for key, label in labels.items()
        }
    me = str(membership.user_id)
    viewer_is_staff = bool(_staff_ids(request.tenant, [me]))
    if not viewer_is_staff:  # a patient's own link: staff by role, as in their study history
        users = [key[1] for key in labels if key[0] == ActorType.USER and key[1] != me]
        roles = _role_labels(request.tenant, users)
        labels = {
            key: ("You" if key[1] == me else roles.get(key[1], "Clinic staff"))
            if key[0] == ActorType.USER
            else label
            for key, label in labels.items()
        }
    rows = [
        {
            "event": e,
            "actor": labels.get((e.actor_type, e.actor_id), "Recipient"),
            # Where staff worked from is not the patient's to see; the recipient's and
            # their own addresses are.
            "ip": e.actor_ip
            if viewer_is_staff or e.actor_type != ActorType.USER or e.actor_id == me
            else "",
        }
        for e in events
    ]
    # On the study, so its access history (the patient's view included) shows the look.
    audit.record(
        actor=_actor(request),
        action=Action.SHARE_VIEWED,
        target=share.study,
        tenant=request.tenant,
        detail={"share": str(share.pk)},
    )
    return render(
        request,
        "sharing/detail.html",
        {
            "share": share,
            "state": share.state_at(now),
            "rows": rows,
            "masked": masked,
            "oversight": not mine,
            "creator": "" if mine else _creator(share, staff_ids),
        },
    )


@require_POST
def share_revoke_view(request: HttpRequest, share_id: uuid.UUID) -> HttpResponse:
    share = _member_share(request, share_id)
    share_revoke(share=share, actor=_actor(request), now=timezone.now())
    messages.success(request, "The link is revoked. The recipient's next request is refused.")
    return HttpResponseRedirect(
        reverse("share_detail", kwargs={"tenant_slug": request.tenant.slug, "share_id": share.pk})
    )


# --- The recipient's pages ----------------------------------------------------------


def _refused(request: HttpRequest, exc: ShareUnavailable) -> HttpResponse:
    template = {410: "sharing/gone.html", 403: "sharing/locked.html"}.get(
        exc.status, "sharing/not_found.html"
    )
    if exc.reason == HELD:
        template = "sharing/paused.html"
    return render(request, template, {"reason": exc.reason}, status=exc.status)


def _unavailable(request: HttpRequest, exc: ShareUnavailable) -> HttpResponse:
    """The page for the session's own link, no longer usable: the session lets go of it."""
    recipient_end(request)
    return _refused(request, exc)


@never_cache
@require_http_methods(["GET", "POST"])
def share_open(request: HttpRequest, token: str) -> HttpResponse:
    """Swap the token in the URL for a short-lived session, then drop it from the URL.

    Only looks the link up: mail link scanners GET every URL of a message and follow
    its redirects, so a use is spent (and access granted) only by the recipient's POST
    on share_home, after the challenge or, for a link without one, the Open button.

    A browser holding another link it opened is asked first, and switches by POST
    (CSRF-checked): any page could otherwise send it to a valid link of its own making
    and take the held one, whose use is already spent, away from its recipient.
    """
    if too_many_lookups(request):
        response = render(request, "sharing/slow_down.html", status=429)
        response["Retry-After"] = "60"
        return response
    now = timezone.now()
    ip = client_ip(request)
    try:
        share = share_lookup(raw=token, now=now, ip=ip)
    except ShareUnavailable as exc:
        if exc.reason == "unknown":
            with transaction.atomic():
                audit.record(
                    actor=Actor(type=ActorType.ANONYMOUS, ip=ip),
                    action=Action.SHARE_REFUSED,
                    target=None,
                    tenant=None,
                    outcome="denied",
                    detail={"state": "unknown"},
                )
        # The session's own link, if any, is left alone: it is checked on its own next
        # request, and another page must not be able to end it by linking to /s/<junk>.
        response = _refused(request, exc)
    else:
        # Opened already in this browser: the session goes on as it was (its lifetime
        # too, so clicking again does not extend it), and no use is spent.
        if recipient_holds_verified(request, share):
            response = HttpResponseRedirect(reverse("share_home"), status=303)
        elif request.method == "GET" and recipient_holds_another(request, share, now=now):
            response = render(request, "sharing/switch.html")
            # Its form posts back here: with no-referrer a browser sends `Origin: null`,
            # which the CSRF check refuses. `origin` sends the host alone, never the path
            # with the token.
            response["Referrer-Policy"] = "origin"
            return response
        else:
            recipient_begin(request, share, verified=False, now=now)
            response = HttpResponseRedirect(reverse("share_home"), status=303)
    response["Referrer-Policy"] = "no-referrer"
    return response


def _recipient(request: HttpRequest) -> tuple[ShareLink | None, bool, HttpResponse | None]:
    try:
        share, verified = recipient_share(request, now=timezone.now(), ip=client_ip(request))
    except RecipientSessionEnded as exc:
        page = render(request, "sharing/timed_out.html", {"reason": exc.reason}, status=403)
        return None, False, page
    except ShareUnavailable as exc:
        return None, False, _unavailable(request, exc)
    if share is None:
        return None, False, render(request, "sharing/not_found.html", status=404)
    return share, verified, None


@never_cache
@require_http_methods(["GET", "POST"])
def share_home(request: HttpRequest) -> HttpResponse:
    share, verified, refused = _recipient(request)
    if refused:
        return refused
    now = timezone.now()
    ip = client_ip(request)
    if not verified:
        try:
            share_openable(share=share, now=now, ip=ip)
        except ShareUnavailable as exc:
            return _unavailable(request, exc)
        if share.challenge == ShareLink.Challenge.NONE:
            # Nothing to answer: the Open button's POST, which link scanners do not send,
            # is what spends the use.
            if request.method == "POST":
                return _recipient_open(request, share, now=now, ip=ip)
            return render(request, "sharing/challenge.html", {"share": share, "form": None})
        form = ChallengeForm(
            request.POST or None, birth_date=share.challenge == ShareLink.Challenge.BIRTH_DATE
        )
        if request.method == "POST" and form.is_valid():
            if share_check_secret(share=share, answer=form.cleaned_data["answer"], now=now, ip=ip):
                return _recipient_open(request, share, now=now, ip=ip)
            share.refresh_from_db()
            if share.locked_at is not None:
                return _unavailable(request, ShareUnavailable(status=403, reason="locked"))
            form.add_error("answer", "That is not right. Check it with the sender and try again.")
        return render(
            request,
            "sharing/challenge.html",
            {"share": share, "form": form},
            status=400 if request.method == "POST" else 200,
        )
    series = _shared_series(share)
    share_touch(share=share, now=now)
    audit.record(
        actor=share_actor(share, ip=ip),
        action=Action.STUDY_VIEWED,
        target=share.study,
        tenant=share.tenant,
        detail={"share": str(share.pk)},
    )
    withheld = [s for s in share_series_withheld(share=share) if s.num_instances]
    with timezone.override(share.tenant.zone):  # the recipient reads the clinic's time
        return render(
            request,
            "sharing/recipient.html",
            {"share": share, "series": series, "withheld": withheld},
        )


def _recipient_open(
    request: HttpRequest, share: ShareLink, *, now: dt.datetime, ip: str | None
) -> HttpResponse:
    """Spend a use and let this session in; the gone page when the last use went meanwhile."""
    try:
        share_use(share=share, now=now, ip=ip)
    except ShareUnavailable as exc:
        return _unavailable(request, exc)
    recipient_verified(request)
    return HttpResponseRedirect(reverse("share_home"), status=303)


def _shared_series(share: ShareLink) -> list[Series]:
    return [s for s in share_series(share=share) if s.num_instances]


@never_cache
@require_http_methods(["GET"])
def share_viewer(request: HttpRequest) -> HttpResponse:
    share, verified, refused = _recipient(request)
    if refused:
        return refused
    if not verified:
        return HttpResponseRedirect(reverse("share_home"))
    session = viewer_session_open_for_share(
        share=share, actor=share_actor(share, ip=client_ip(request))
    )
    context = viewer_context(
        study=share.study,
        series=_shared_series(share),
        wanted=request.GET.get("series", ""),
        session=session,
        wado_root="/s/dicomweb",
        back_url=reverse("share_home"),
        deidentified=share.deidentify,
    )
    return render(request, "imaging/viewer.html", context)


@require_http_methods(["GET"])
def share_download(request: HttpRequest) -> HttpResponse:
    share, verified, refused = _recipient(request)
    if refused:
        return refused
    if not verified:
        return HttpResponseRedirect(reverse("share_home"))
    if not share.allow_download:
        raise PermissionDenied("This link does not allow download.")
    instances = instances_for_download(
        study=share.study, series_ids=[s.pk for s in _shared_series(share)]
    )
    actor = share_actor(share, ip=client_ip(request))
    archive = study_zip(
        study=share.study, instances=instances, actor=actor, pseudonym=share.pseudonym
    )
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.SHARE_DOWNLOADED,
            target=share.study,
            tenant=share.tenant,
            detail={
                "share": str(share.pk),
                "instances": len(instances),
                "deidentified": share.deidentify,
            },
        )
    return zip_response(archive, study=share.study)


@require_POST
def share_leave(request: HttpRequest) -> HttpResponse:
    recipient_end(request)
    return render(request, "sharing/left.html")
