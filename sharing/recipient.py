"""The recipient's side of a share link: a short-lived session instead of the token.

The first visit swaps the token in the URL for this session (new session key) and
redirects to a token-free URL; every later request re-reads the link, so revocation
and expiry apply to the very next request, an open viewer's included.

The session lets go of the link after SESSION_MAX_SECONDS, or sooner after the idle
limit a member's session has (the clinic's when shorter): a recipient who walked away
from a shared computer leaves nothing open for the next person. The viewer's timed
access check does not count as activity, as for members.

The session starts unverified whatever the link's challenge: a GET (which mail link
scanners send for every URL of a message) spends no use and shows no study. Only the
recipient's POST, the challenge's answer or the Open button, spends one and verifies it.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest

import audit
from audit.models import Action
from sharing.models import ShareLink
from sharing.services import share_actor, share_current
from tenants.sessions import is_background_poll

SESSION_KEY = "share_access"
SESSION_MAX_SECONDS = 4 * 3600
# Activity is written to the session at most this often, not on every image request.
SEEN_RESOLUTION_SECONDS = 10


class RecipientSessionEnded(Exception):
    """This browser's hold on its link ran out (`reason`: "idle" or "absolute")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def recipient_idle_seconds(share: ShareLink) -> int:
    return min(settings.SESSION_IDLE_SECONDS, share.tenant.session_idle_minutes * 60)


def recipient_begin(
    request: HttpRequest, share: ShareLink, *, verified: bool, now: dt.datetime
) -> None:
    """Hold `share` in this browser's session for at most SESSION_MAX_SECONDS.

    The limit is kept in the session, not set as the session's own expiry: a member
    signed in on this browser who opens a link keeps their session as it was (a link
    must not be a way to end or stretch a colleague's session), and a recipient's
    cookie lasts only until the browser closes (a shared computer).
    """
    request.session.cycle_key()
    until = now + dt.timedelta(seconds=SESSION_MAX_SECONDS)
    request.session[SESSION_KEY] = {
        "id": str(share.pk),
        "verified": verified,
        "until": until.timestamp(),
        "seen": now.timestamp(),
    }
    if not request.user.is_authenticated:
        request.session.set_expiry(0)


def recipient_holds_verified(request: HttpRequest, share: ShareLink) -> bool:
    """Whether this browser already opened `share` (its session is still alive): the
    recipient clicking the emailed link again, which must not spend another use."""
    data = request.session.get(SESSION_KEY) or {}
    return data.get("id") == str(share.pk) and bool(data.get("verified"))


def recipient_holds_another(request: HttpRequest, share: ShareLink, *, now: dt.datetime) -> bool:
    """Whether this browser holds another link, opened and not yet timed out (idle or
    absolute): opening `share` would let go of it, and with it a use already spent."""
    data = request.session.get(SESSION_KEY) or {}
    if not data.get("verified") or data.get("id") == str(share.pk):
        return False
    held = _held_link(data)
    return held is not None and _timed_out(data, held, now=now) is None


def _held_link(data: dict) -> ShareLink | None:
    return (
        ShareLink.objects.unscoped(reason="the recipient session names the link")
        .select_related("tenant")
        .filter(pk=data["id"])
        .first()
    )


def _timed_out(data: dict, share: ShareLink, *, now: dt.datetime) -> str | None:
    """Why this browser's hold on `share` ran out ("absolute" or "idle"), if it did."""
    stamp = now.timestamp()
    until = data.get("until")
    if not isinstance(until, int | float) or stamp >= until:
        return "absolute"
    if stamp - data.get("seen", until - SESSION_MAX_SECONDS) > recipient_idle_seconds(share):
        return "idle"
    return None


def recipient_verified(request: HttpRequest) -> None:
    data = dict(request.session[SESSION_KEY])
    data["verified"] = True
    request.session.cycle_key()
    request.session[SESSION_KEY] = data


def recipient_hold_began(request: HttpRequest) -> dt.datetime:
    """When this browser's hold on its link began (now if it holds none): a viewer
    session opened before it was another sitting, another person's perhaps."""
    until = (request.session.get(SESSION_KEY) or {}).get("until")
    if not isinstance(until, int | float):
        return dt.datetime.now(tz=dt.UTC)
    return dt.datetime.fromtimestamp(until - SESSION_MAX_SECONDS, tz=dt.UTC)


def recipient_end(request: HttpRequest) -> None:
    """Let go of the link, under a new session key.

    A request still under way (a slow frame of the viewer left behind) saves the session
    as it loaded it, link included: with the old key gone, that save finds no row and
    fails, instead of giving the link back to the browser that just closed it.
    """
    if SESSION_KEY not in request.session:
        return
    request.session.cycle_key()
    del request.session[SESSION_KEY]


def recipient_share(
    request: HttpRequest, *, now: dt.datetime, ip: str | None
) -> tuple[ShareLink | None, bool]:
    """The link this browser holds and whether its challenge was passed.

    Raises RecipientSessionEnded when the hold ran out (audited once, then let go), and
    ShareUnavailable when the link was revoked, expired or locked meanwhile.
    """
    data = request.session.get(SESSION_KEY)
    if not data:
        return None, False
    share = _held_link(data)
    if share is None:
        recipient_end(request)
        return None, False
    reason = _timed_out(data, share, now=now)
    if reason is not None:
        _ended(request, share, reason=reason, ip=ip)
    share = share_current(share=share, now=now, ip=ip)
    stamp = now.timestamp()
    seen = data.get("seen", data["until"] - SESSION_MAX_SECONDS)
    if stamp - seen >= SEEN_RESOLUTION_SECONDS and not is_background_poll(request):
        request.session[SESSION_KEY] = {**data, "seen": stamp}
    return share, bool(data.get("verified"))


def _ended(request: HttpRequest, share: ShareLink, *, reason: str, ip: str | None) -> None:
    recipient_end(request)
    with transaction.atomic():
        audit.record(
            actor=share_actor(share, ip=ip),
            action=Action.SESSION_EXPIRED,
            target=share,
            tenant=share.tenant,
            detail={"share": str(share.pk), "reason": reason},
        )
    raise RecipientSessionEnded(reason)
