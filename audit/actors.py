"""Who did it and to what: small value objects passed to audit.record()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models
from django.http import HttpRequest

from audit.models import ActorType


@dataclass(frozen=True, slots=True)
class Actor:
    type: ActorType
    id: str = ""
    ip: str | None = None

    @classmethod
    def for_user(cls, user: Any, *, ip: str | None = None) -> Actor:
        if user is None or not getattr(user, "is_authenticated", False):
            return cls(type=ActorType.ANONYMOUS, ip=ip)
        return cls(type=ActorType.USER, id=str(user.pk), ip=ip)

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        return cls.for_user(getattr(request, "user", None), ip=client_ip(request))

    @classmethod
    def for_token(cls, token: Any, *, ip: str | None = None) -> Actor:
        return cls(type=ActorType.API_TOKEN, id=str(token.pk), ip=ip)

    @classmethod
    def system(cls, component: str) -> Actor:
        return cls(type=ActorType.SYSTEM, id=component)


@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str

    @classmethod
    def of(cls, obj: models.Model | Target | None) -> Target:
        if obj is None:
            return cls(type="", id="")
        if isinstance(obj, Target):
            return obj
        return cls(type=obj._meta.label_lower, id=str(obj.pk))


def client_ip(request: HttpRequest) -> str | None:
    """The peer address. Behind a proxy, the proxy sets REMOTE_ADDR (see README)."""
    return request.META.get("REMOTE_ADDR") or None
