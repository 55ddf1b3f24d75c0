"""Test helpers: build data through the real services; services that may be absent."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import connection
from django.test import Client

from audit.actors import Actor
from tenants.models import Membership, Tenant, User
from tenants.roles import Perm
from tenants.services import (
    membership_add,
    tenant_create,
    totp_device_create_confirmed,
    user_create,
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_ACTOR = Actor.system("tests")
PASSWORD = "correct horse battery staple 42"


def require_service(name: str, available: bool, reason: str) -> None:
    """Skip locally when a service is missing; in CI a missing service is a failure."""
    if available:
        return
    message = f"{name} not available: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: services are required, not optional)")
    pytest.skip(message)


def require_postgresql() -> None:
    require_service(
        "PostgreSQL",
        connection.vendor == "postgresql",
        "set DATABASE_URL=postgres://... to run this test",
    )


def tcp_reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def totp_device_for(user: User):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.filter(user=user, confirmed=True).first() or (
        totp_device_create_confirmed(user=user, actor=TEST_ACTOR)
    )


def current_totp(device) -> str:
    from django_otp.oath import totp

    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def verified_client(user: User, **client_kwargs) -> Client:
    """Signed in with password and second factor: the session the real flow ends with."""
    from django_otp import DEVICE_ID_SESSION_KEY

    from tenants.mfa import MFA_AT

    device = totp_device_for(user)
    client = Client(**client_kwargs)
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session[MFA_AT] = int(time.time())
    session.save()
    return client


def make_clinic(slug: str, name: str | None = None) -> Tenant:
    return tenant_create(slug=slug, name=name or slug.title(), actor=TEST_ACTOR)


def make_member(tenant: Tenant, *roles: str, email: str | None = None) -> User:
    email = email or f"{'-'.join(roles)}@{tenant.slug}.example"
    user = User.objects.filter(email=email).first() or user_create(
        email=email, password=PASSWORD, actor=TEST_ACTOR, tenant=tenant
    )
    membership_add(tenant=tenant, user=user, roles=list(roles), actor=TEST_ACTOR)
    return user


def membership_of(user: User, tenant: Tenant) -> Membership:
    return Membership.objects.for_tenant(tenant).get(user=user)


def sharer(user: User, tenant: Tenant) -> dict[str, Any]:
    """`share_create`'s arguments for a link made by `user`: a member, or, for a patient,
    from their portal."""
    membership = membership_of(user, tenant)
    as_patient = membership.has_perm(Perm.OWN_STUDIES) and not membership.has_perm(Perm.STUDY_SHARE)
    return {"membership": membership, "as_patient": as_patient}


@contextmanager
def celery_broker(url: str):
    """Point the Celery app at another broker for a while, dropping cached connections.

    A Redis URL moves the result store with it, as REDIS_URL names both: Redis down is
    both down.
    """
    from portal.celery import app

    def reset() -> None:
        app._pool = None
        app.amqp._producer_pool = None
        app._backend_cache = None
        app._local.__dict__.pop("backend", None)

    original = app.conf.broker_url, app.conf.result_backend
    reset()
    app.conf.broker_url = url
    if url.startswith("redis://"):
        app.conf.result_backend = url
    try:
        yield app
    finally:
        reset()
        app.conf.broker_url, app.conf.result_backend = original


def page_body(response) -> bytes:
    """The page without its per-response CSRF token, which is random by design."""
    import re

    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", response.content)


def response_bytes(response) -> bytes:
    """A response's body, streamed or not."""
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_client(endpoint: str):
    """A boto3 client for the test S3 server (`s3_endpoint` fixture)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="eu-central-1",
    )


def within_one_minute(monkeypatch) -> None:
    """Hold the clock at the start of a minute: per-minute counts then see one minute."""
    import datetime as dt

    from django.utils import timezone

    moment = timezone.now().replace(second=1, microsecond=0) + dt.timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: moment)
