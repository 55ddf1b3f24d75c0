"""The recipient's side of a share link: a short-lived session instead of the token.

The first visit swaps the token in the URL for this session (new session key) and
redirects to a token-free URL; every later request re-reads the link, so revocation
and expiry apply to the very next request, an open viewer's included.

The session starts unverified whatever the link's challenge: a GET (which mail link
scanners send for every URL of a message) spends no use and shows no study. Only the
recipient's POST, the challenge's answer or the Open button, spends one and verifies it.
"""

from __future__ import annotations

import datetime as dt

from django.http import HttpRequest

from sharing.models import ShareLink
from sharing.services import share_current

SESSION_KEY = "share_access"
SESSION_MAX_SECONDS = 4 * 3600


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
    }
    if not request.user.is_authenticated:
        request.session.set_expiry(0)


def recipient_holds_verified(request: HttpRequest, share: ShareLink) -> bool:
    """Whether this browser already opened `share` (its session is still alive): the
    recipient clicking the emailed link again, which must not spend another use."""
    data = request.session.get(SESSION_KEY) or {}
    return data.get("id") == str(share.pk) and bool(data.get("verified"))


def recipient_verified(request: HttpRequest) -> None:
    data = dict(request.session[SESSION_KEY])
    data["verified"] = True
    request.session.cycle_key()
    request.session[SESSION_KEY] = data


def recipient_end(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)


def recipient_share(
    request: HttpRequest, *, now: dt.datetime, ip: str | None
) -> tuple[ShareLink | None, bool]:
    """The link this browser holds and whether its challenge was passed.

    Raises ShareUnavailable when the link was revoked, expired or locked meanwhile.
    """
    data = request.session.get(SESSION_KEY)
    if not data:
        return None, False
    if now.timestamp() >= data.get("until", 0):
        recipient_end(request)
        return None, False
    share = (
        ShareLink.objects.unscoped(reason="the recipient session names the link")
        .select_related("tenant")
        .filter(pk=data["id"])
        .first()
    )
    if share is None:
        return None, False
    return share_current(share=share, now=now, ip=ip), bool(data.get("verified"))
