"""API tokens for partners: created once, shown once, stored as a hash, revocable."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets

from django.core.exceptions import ValidationError
from django.db import connection, transaction

import audit
from audit.actors import Actor
from audit.models import Action
from portal import rows
from tenants.models import ApiToken, Tenant

TOKEN_PREFIX = "ptk"  # noqa: S105  (a label, not a secret)
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_digest(raw: str) -> str:
    """The stored form of a link or invitation token taken from a URL (which may hold
    any code point, lone surrogates included)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


@transaction.atomic
def api_token_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: list[str],
    actor: Actor,
    now: dt.datetime,
    expires_days: int | None = None,
    created_by: object | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; the returned plaintext is never stored or shown again."""
    valid = set(ApiToken.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if not scopes or unknown:
        raise ValidationError(
            f"Unknown or missing scopes: {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(sorted(valid))}."
        )
    if expires_days is not None and expires_days <= 0:
        raise ValidationError("--expires-days must be a positive number of days.")
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        tenant=tenant,
        name=name[:100],
        prefix=prefix,
        secret_hash=_hash(secret),
        scopes=sorted(set(scopes)),
        created_by=created_by,
        created_at=now,
        expires_at=now + dt.timedelta(days=expires_days) if expires_days else None,
    )
    audit.record(
        actor=actor,
        action=Action.API_TOKEN_CREATED,
        target=token,
        tenant=tenant,
        detail={"prefix": prefix, "scopes": token.scopes},
    )
    return token, f"{TOKEN_PREFIX}_{prefix}_{secret}"


_TOKEN_FIELDS = rows.fields(ApiToken)
_TENANT_FIELDS = rows.fields(Tenant)


@functools.cache
def _lookup_sql(vendor: str) -> str:
    # A credential names its clinic only once found, so this lookup is not clinic-scoped.
    # Every partner request runs it: one precompiled statement (portal.rows says why).
    # Identifiers come from the models' metadata; the prefix is a parameter.
    selected = rows.columns(ApiToken, _TOKEN_FIELDS) + rows.columns(Tenant, _TENANT_FIELDS)
    return (
        f"SELECT {', '.join(selected)} "  # noqa: S608
        f"FROM {rows.table(ApiToken)} JOIN {rows.table(Tenant)} "
        f"ON {rows.column(Tenant, 'id')} = {rows.column(ApiToken, 'tenant')} "
        f"WHERE {rows.column(ApiToken, 'prefix')} = %s"
    )


def _token_with_tenant(prefix: str) -> ApiToken | None:
    with rows.prepared_cursor() as cursor:
        cursor.execute(_lookup_sql(connection.vendor), [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(_TOKEN_FIELDS)
    token = rows.from_row(ApiToken, _TOKEN_FIELDS, row[:split])
    token.tenant = rows.from_row(Tenant, _TENANT_FIELDS, row[split:])
    return token


def api_token_authenticate(*, raw: str, now: dt.datetime) -> ApiToken | None:
    """The live token for a presented credential, or None (unknown, revoked, expired)."""
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    _, prefix, secret = parts
    token = _token_with_tenant(prefix)
    expected = token.secret_hash if token is not None else _hash("")
    if not hmac.compare_digest(expected, _hash(secret)) or token is None:
        return None
    if token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
        return None
    if not token.tenant.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(tenant=token.tenant, pk=token.pk).update(last_used_at=now)
    return token


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: Actor, now: dt.datetime) -> None:
    if token.revoked_at is not None:
        return
    ApiToken.objects.filter(tenant=token.tenant, pk=token.pk).update(revoked_at=now)
    token.revoked_at = now
    audit.record(
        actor=actor,
        action=Action.API_TOKEN_REVOKED,
        target=token,
        tenant=token.tenant,
        detail={"prefix": token.prefix},
    )
