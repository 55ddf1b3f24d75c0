"""Session lifetime: idle timeout, absolute lifetime, and revocation on access change.

Limits come from the strictest policy among the user's clinics (never longer than the
platform's SESSION_IDLE_SECONDS / SESSION_COOKIE_AGE), read again on every request: a
clinic joined mid-session, or one that shortens its limits, binds sessions already
open at once. Deactivating the user is caught by Django's auth backend on the next
request; deactivating one of the session's memberships (those it started with and
those added since), or suspending its clinic, ends the whole session on the next
request.

Only what a person does counts as activity. Polls a page makes by itself on a timer
(the viewer's access check) are answered, and refused once the session has ended,
but do not move the idle clock: an unattended workstation with the viewer open
still idles out. A poll that reports input since the last one (`?active=1`: the
viewer's scrolling and windowing through images it already holds ask the server
nothing) counts, as the person's own action.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import Resolver404, resolve, reverse

import audit
from audit.actors import Actor
from audit.models import Action
from portal.logredact import is_token_url
from tenants.middleware import is_api_path, signed_out_response
from tenants.models import Membership, Tenant, User
from tenants.selectors import user_memberships

STARTED_AT = "_session_started_at"
LAST_SEEN_AT = "_session_last_seen_at"
IDLE_LIMIT = "_session_idle_seconds"
ABSOLUTE_LIMIT = "_session_absolute_seconds"
MEMBERSHIPS = "_session_memberships"

# Routes only ever asked by a timer, never by a person's action. Named here, on the
# server, rather than marked by a request header: nothing a client sends extends a session.
BACKGROUND_POLL_ROUTES = frozenset({"viewer_dicomweb_study_access", "share_dicomweb_study_access"})


def session_limits(user: User) -> tuple[int, int, list[str]]:
    """(idle seconds, absolute seconds, membership ids) for a new session of `user`."""
    idle = settings.SESSION_IDLE_SECONDS
    absolute = settings.SESSION_COOKIE_AGE
    memberships = list(user_memberships(user=user))
    for membership in memberships:
        idle = min(idle, membership.tenant.session_idle_minutes * 60)
        absolute = min(absolute, membership.tenant.session_absolute_hours * 3600)
    return idle, absolute, [str(m.pk) for m in memberships]


def session_start(request: HttpRequest, user: User, *, now: float) -> None:
    idle, absolute, memberships = session_limits(user)
    request.session[STARTED_AT] = now
    request.session[LAST_SEEN_AT] = now
    request.session[IDLE_LIMIT] = idle
    request.session[ABSOLUTE_LIMIT] = absolute
    request.session[MEMBERSHIPS] = memberships


@receiver(user_logged_in, dispatch_uid="session_security_start")
def _on_login(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        session_start(request, user, now=time.time())


def is_background_poll(request: HttpRequest) -> bool:
    """Whether the request is a timer's poll rather than someone's action."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    return match.url_name in BACKGROUND_POLL_ROUTES and request.GET.get("active") != "1"


def _live_limits(user: User) -> dict[str, tuple[int, int]]:
    """Each live membership of `user`, with its clinic's (idle, absolute) seconds; one
    query, the same cost as counting them."""
    rows = (
        Membership.objects.unscoped(reason="the session's own memberships span clinics")
        .filter(user=user, is_active=True, tenant__status=Tenant.Status.ACTIVE)
        .values_list("pk", "tenant__session_idle_minutes", "tenant__session_absolute_hours")
    )
    return {str(pk): (idle * 60, absolute * 3600) for pk, idle, absolute in rows}


def _limits_follow_policy(session: Any, live: dict[str, tuple[int, int]]) -> bool:
    """Apply the strictest live policy to `session`; False if one of its memberships is
    gone (deactivated, or its clinic suspended)."""
    known = session.get(MEMBERSHIPS, [])
    if any(pk not in live for pk in known):
        return False
    idle = min([settings.SESSION_IDLE_SECONDS, *(limits[0] for limits in live.values())])
    absolute = min([settings.SESSION_COOKIE_AGE, *(limits[1] for limits in live.values())])
    # Written only on change: a background poll must not save the session.
    if session[IDLE_LIMIT] != idle:
        session[IDLE_LIMIT] = idle
    if session[ABSOLUTE_LIMIT] != absolute:
        session[ABSOLUTE_LIMIT] = absolute
    if len(known) != len(live):  # joined since: its deactivation ends the session too
        session[MEMBERSHIPS] = sorted(live)
    return True


class SessionSecurityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            now = time.time()
            session = request.session
            if STARTED_AT not in session:
                session_start(request, user, now=now)
            reason = None
            if not _limits_follow_policy(session, _live_limits(user)):
                reason = "access_changed"
            elif now - session[LAST_SEEN_AT] > session[IDLE_LIMIT]:
                reason = "idle"
            elif now - session[STARTED_AT] > session[ABSOLUTE_LIMIT]:
                reason = "absolute"
            if reason is not None:
                response = self._end(request, user, reason)
                if is_token_url(request.path):
                    # Signed out, the link goes on to its page as anyone's would, rather
                    # than through the sign-in page with its token in `next=`.
                    return self.get_response(request)
                return response
            if not is_background_poll(request):
                session[LAST_SEEN_AT] = now
        return self.get_response(request)

    @staticmethod
    def _end(request: HttpRequest, user: User, reason: str) -> HttpResponse:
        action = Action.SESSION_REVOKED if reason == "access_changed" else Action.SESSION_EXPIRED
        audit.record_for_user(
            user=user,
            actor=Actor.system("session"),
            action=action,
            detail={"reason": reason},
        )
        logout(request)
        if is_api_path(request):
            return signed_out_response()
        messages.info(request, "Your session ended. Please sign in again.")
        login_url = reverse("login")
        if request.method == "GET":
            return HttpResponseRedirect(
                f"{login_url}?{urlencode({'next': request.get_full_path()})}"
            )
        return HttpResponseRedirect(login_url)
