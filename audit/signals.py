"""Sign-in, sign-in failure and sign-out, recorded in each clinic the user belongs to."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

import audit
from audit.actors import Actor, client_ip
from audit.models import Action, Outcome


def _ip(request: HttpRequest | None) -> str | None:
    return client_ip(request) if request is not None else None


@receiver(user_logged_in, dispatch_uid="audit_login")
def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    audit.record_for_user(
        user=user,
        actor=Actor.for_user(user, ip=_ip(request)),
        action=Action.LOGIN_SUCCEEDED,
        detail={"step": "password"},
    )


@receiver(user_logged_out, dispatch_uid="audit_logout")
def on_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    audit.record_for_user(
        user=user, actor=Actor.for_user(user, ip=_ip(request)), action=Action.LOGOUT
    )


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # The attempted username is never stored: people type passwords into it.
    email = str(credentials.get("username") or credentials.get("email") or "")
    user = get_user_model().objects.filter(email__iexact=email).first() if email else None
    audit.record_for_user(
        user=user,
        actor=Actor.for_user(None, ip=_ip(request)),
        action=Action.LOGIN_FAILED,
        outcome=Outcome.FAILURE,
        detail={"reason": "invalid_credentials", "known_account": user is not None},
    )
