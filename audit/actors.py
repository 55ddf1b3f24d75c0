"""Who did it and to what: small value objects passed to audit.record()."""

from __future__ import annotations

import getpass
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest
from django.utils.ipv6 import clean_ipv6_address

from audit.models import ActorType


@dataclass(frozen=True, slots=True)
class Actor:
    type: ActorType
    id: str = ""
    ip: str | None = None

    def __post_init__(self) -> None:
        # The event's hash covers the address as stored, so store it in one spelling.
        object.__setattr__(self, "ip", ip_canonical(self.ip))

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

    @classmethod
    def cli(cls, command: str) -> Actor:
        """A management command, named with the account that ran it: `cli.<command>@<os
        user>`, the person behind sudo when there is one. Who minted a token or lifted
        a lockout is what an auditor asks, and a bare component name does not say."""
        return cls.system(f"cli.{command}@{os_user()}"[:ACTOR_ID_LENGTH])


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


ACTOR_ID_LENGTH = 64  # AuditEvent.actor_id


def os_user() -> str:
    """The operating-system account running this process (SUDO_USER's when under sudo)."""
    name = os.environ.get("SUDO_USER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # a uid with no passwd entry (a container)
            name = f"uid{os.getuid()}"
    return name


def ip_canonical(ip: str | None) -> str | None:
    """The address as the database stores it (Django's IPv6 spelling); None when it is
    not an address (a misconfigured proxy), which the column would refuse."""
    if not ip:
        return None
    try:
        if ":" in ip:
            return clean_ipv6_address(ip.strip())
        return str(ipaddress.IPv4Address(ip.strip()))
    except (ValueError, ValidationError):
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: the peer's, or behind the portal's own proxies the one they
    forwarded (portal.middleware.ForwardedForMiddleware, TRUSTED_PROXY_COUNT)."""
    return request.META.get("REMOTE_ADDR") or None
