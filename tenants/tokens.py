"""API tokens for partners: created once, shown once, stored as a hash, revocable."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, models, transaction

import audit
from audit.actors import Actor
from audit.models import Action
from tenants.models import ApiToken, Tenant

TOKEN_PREFIX = "ptk"  # noqa: S105  (a label, not a secret)
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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


def _column(model: type[models.Model], field: models.Field) -> str:
    quote = connection.ops.quote_name
    return f"{quote(model._meta.db_table)}.{quote(field.column)}"


@functools.cache
def _lookup_sql(vendor: str) -> str:
    # A credential names its clinic only once found, so this lookup is not clinic-scoped.
    # Every partner request runs it: one precompiled statement, not an ORM query whose
    # compilation and row handling cost several times the database's 0.1 ms. Identifiers
    # come from the models' metadata; the prefix is a parameter.
    columns = [_column(ApiToken, f) for f in ApiToken._meta.concrete_fields]
    columns += [_column(Tenant, f) for f in Tenant._meta.concrete_fields]
    token_tenant = _column(ApiToken, ApiToken._meta.get_field("tenant"))
    token_prefix = _column(ApiToken, ApiToken._meta.get_field("prefix"))
    return (
        f"SELECT {', '.join(columns)} "  # noqa: S608
        f"FROM {connection.ops.quote_name(ApiToken._meta.db_table)} "
        f"JOIN {connection.ops.quote_name(Tenant._meta.db_table)} "
        f"ON {_column(Tenant, Tenant._meta.pk)} = {token_tenant} WHERE {token_prefix} = %s"
    )


@functools.cache
def _converters(vendor: str, model: type[models.Model]) -> list[list[Callable[..., Any]]]:
    """Each field's conversions of the driver's value, as the ORM applies them."""
    table = model._meta.db_table
    return [
        [*connection.ops.get_db_converters(f.get_col(table)), *f.get_db_converters(connection)]
        for f in model._meta.concrete_fields
    ]


def _instance(model: type[models.Model], values: Sequence[Any]) -> Any:
    fields = model._meta.concrete_fields
    converted = []
    for field, value, converters in zip(
        fields, values, _converters(connection.vendor, model), strict=True
    ):
        for convert in converters:
            value = convert(value, field.get_col(model._meta.db_table), connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def _token_with_tenant(prefix: str) -> ApiToken | None:
    with connection.cursor() as cursor:
        cursor.execute(_lookup_sql(connection.vendor), [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(ApiToken._meta.concrete_fields)
    token = _instance(ApiToken, row[:split])
    token.tenant = _instance(Tenant, row[split:])
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
