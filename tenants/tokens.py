"""API tokens for partners: created once, shown once, stored as a hash, revocable."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction

import audit
from audit.actors import Actor
from audit.models import Action, Outcome
from portal import rows
from tenants.models import ApiToken, Membership, Tenant, User
from tenants.roles import Perm, perms_for
from tenants.selectors import membership_for_user
from tenants.throttle import past_minute_limit

TOKEN_PREFIX = "ptk"  # noqa: S105  (a label, not a secret)
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
# Beyond this a token is not "expiring"; it also keeps the date inside what datetime holds.
MAX_EXPIRES_DAYS = 3650

# What a member must hold to put each scope on a token. A token acts for the whole
# clinic, so its creator needs the clinic-wide permissions behind what the scope opens:
# a tenant admin who sees no images cannot hand a system the images.
SCOPE_PERMS: dict[str, frozenset[Perm]] = {
    ApiToken.Scope.DICOMWEB_READ: frozenset({Perm.WORKLIST_VIEW, Perm.IMAGES_VIEW}),
    ApiToken.Scope.DICOMWEB_WRITE: frozenset({Perm.STUDY_UPLOAD}),
    ApiToken.Scope.STUDIES_READ: frozenset({Perm.WORKLIST_VIEW}),
    ApiToken.Scope.SHARES_WRITE: frozenset({Perm.STUDY_SHARE, Perm.WORKLIST_VIEW}),
    # Staff open a confidential study only by breaking the glass, with a reason; only
    # those who may do that may give a system the same access without one.
    ApiToken.Scope.CONFIDENTIAL_READ: frozenset({Perm.BREAK_GLASS}),
}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_digest(raw: str) -> str:
    """The stored form of a link or invitation token taken from a URL (which may hold
    any code point, lone surrogates included)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def api_token_grantable_scopes(*, tenant: Tenant, created_by: User | None) -> list[str]:
    """The scopes `created_by` may put on a token of `tenant`; all for an operator (None)."""
    if created_by is None:
        return list(ApiToken.Scope.values)
    membership = membership_for_user(tenant=tenant, user=created_by)
    held = membership.permissions if membership is not None else frozenset()
    return [
        scope
        for scope in ApiToken.Scope.values
        if scope in SCOPE_PERMS and SCOPE_PERMS[scope] <= held
    ]


def api_token_check(
    *, tenant: Tenant, scopes: list[str], expires_days: int | None, created_by: User | None
) -> list[str]:
    """The scopes, deduplicated, once valid for this creator; raises ValidationError."""
    valid = set(ApiToken.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if not scopes or unknown:
        raise ValidationError(
            f"Unknown or missing scopes: {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(sorted(valid))}."
        )
    grantable = api_token_grantable_scopes(tenant=tenant, created_by=created_by)
    refused = sorted(set(scopes) - set(grantable))
    if refused:
        raise ValidationError(
            f"Your roles in this clinic do not allow giving a token {', '.join(refused)}: "
            "a token may only do what its creator may."
        )
    if ApiToken.Scope.SHARES_WRITE in scopes and ApiToken.Scope.DICOMWEB_READ not in scopes:
        # sharing.services.share_create refuses such a token every link.
        raise ValidationError(
            "A token with shares:write also needs dicomweb:read: a link shows its study to "
            "whoever opens it, so a token may only share what it may read."
        )
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRES_DAYS:
        raise ValidationError(
            f"A token expires after 1 to {MAX_EXPIRES_DAYS} days (asked: {expires_days})."
        )
    return sorted(set(scopes))


@transaction.atomic
def api_token_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: list[str],
    actor: Actor,
    now: dt.datetime,
    expires_days: int | None = None,
    created_by: User | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; the returned plaintext is never stored or shown again.

    A member creating it (`created_by`) may give only the scopes their roles allow;
    without one (an operator's command on the server) every scope may be given.
    """
    scopes = api_token_check(
        tenant=tenant, scopes=scopes, expires_days=expires_days, created_by=created_by
    )
    name = name.strip()
    name_max = ApiToken._meta.get_field("name").max_length
    if not name or len(name) > name_max or not name.isprintable():
        # The name is how a clinic tells its tokens apart in the admin and the audit log.
        raise ValidationError(
            {"name": f"Name the token on one line, 1 to {name_max} characters (who uses it)."}
        )
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        tenant=tenant,
        name=name,
        prefix=prefix,
        secret_hash=_hash(secret),
        scopes=scopes,
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


def _creator_roles_sql(vendor: str) -> str:
    """The role codes, comma-separated, of the token's creator as a live member of its
    clinic (an active account and membership); NULL when there are none."""
    through = Membership.roles.through
    joined = "string_agg" if vendor == "postgresql" else "group_concat"
    return (
        f"(SELECT {joined}({rows.column(through, 'role')}, ',') "  # noqa: S608
        f"FROM {rows.table(through)} "
        f"JOIN {rows.table(Membership)} "
        f"ON {rows.column(Membership, 'id')} = {rows.column(through, 'membership')} "
        f"JOIN {rows.table(User)} ON {rows.column(User, 'id')} = {rows.column(Membership, 'user')} "
        f"WHERE {rows.column(Membership, 'tenant')} = {rows.column(ApiToken, 'tenant')} "
        f"AND {rows.column(Membership, 'user')} = {rows.column(ApiToken, 'created_by')} "
        f"AND {rows.column(Membership, 'is_active')} AND {rows.column(User, 'is_active')})"
    )


@functools.cache
def _lookup_sql(vendor: str) -> str:
    # A credential names its clinic only once found, so this lookup is not clinic-scoped.
    # Every partner request runs it: one precompiled statement (portal.rows says why).
    # Identifiers come from the models' metadata; the prefix is a parameter.
    selected = rows.columns(ApiToken, _TOKEN_FIELDS) + rows.columns(Tenant, _TENANT_FIELDS)
    return (
        f"SELECT {', '.join(selected)}, {_creator_roles_sql(vendor)} "  # noqa: S608
        f"FROM {rows.table(ApiToken)} JOIN {rows.table(Tenant)} "
        f"ON {rows.column(Tenant, 'id')} = {rows.column(ApiToken, 'tenant')} "
        f"WHERE {rows.column(ApiToken, 'prefix')} = %s"
    )


def _token_with_tenant(prefix: str) -> tuple[ApiToken, frozenset[str]] | None:
    """The token, its clinic and its creator's live roles there."""
    with rows.prepared_cursor() as cursor:
        cursor.execute(_lookup_sql(connection.vendor), [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    split, end = len(_TOKEN_FIELDS), len(_TOKEN_FIELDS) + len(_TENANT_FIELDS)
    token = rows.from_row(ApiToken, _TOKEN_FIELDS, row[:split])
    token.tenant = rows.from_row(Tenant, _TENANT_FIELDS, row[split:end])
    return token, frozenset(row[end].split(",")) if row[end] else frozenset()


def _scopes_still_held(token: ApiToken, creator_roles: frozenset[str]) -> None:
    """Suspend the scopes whose permissions the token's creator no longer holds.

    A token may do no more than the member who made it, and that holds for as long
    as it is used, not only when it was made: a member who leaves the clinic, or
    loses the role behind a scope, must not keep that access through a token they
    still hold. The scopes come back if the role does. An operator's token (no
    creator) keeps its scopes.
    """
    if token.created_by_id is None:
        return
    token.suspended_scopes = scopes_suspended(scopes=token.scopes, held=perms_for(creator_roles))
    token.scopes = [s for s in token.scopes if s not in token.suspended_scopes]


def scopes_suspended(*, scopes: list[str], held: frozenset[Perm]) -> tuple[str, ...]:
    """Those of a member's token's `scopes` that the member's permissions `held` no
    longer cover."""
    return tuple(s for s in scopes if not (s in SCOPE_PERMS and SCOPE_PERMS[s] <= held))


def token_scope_refusal(token: ApiToken, scope: str | None) -> str:
    """Why `token` may not use `scope`, in words a partner's engineer can act on."""
    if scope in token.suspended_scopes:
        return (
            f"This token's {scope} scope is suspended: the person who created it no longer "
            "holds the role it needs in the clinic. Ask the clinic for a new token."
        )
    return f"This token lacks the {scope} scope."


_PREFIX = re.compile(r"[0-9a-f]{8}")


class TokenRefused(Exception):
    """A presented credential is no live token; `message` says so in words its holder
    can act on, and names no more than the credential proves its holder knows."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


CREDENTIAL_REQUIRED_TEXT = (
    "A valid, unexpired API token is required (Authorization: Bearer <token>)."
)
CREDENTIAL_REVOKED_TEXT = "This API token was revoked by the clinic; ask the clinic for a new one."
CREDENTIAL_EXPIRED_TEXT = "This API token expired on {date}; ask the clinic for a new one."


def api_token_authenticate(*, raw: str, now: dt.datetime, ip: str | None = None) -> ApiToken | None:
    """The live token for a presented credential, or None (unknown, revoked, expired)."""
    try:
        return api_token_verify(raw=raw, now=now, ip=ip)
    except TokenRefused:
        return None


def api_token_verify(*, raw: str, now: dt.datetime, ip: str | None = None) -> ApiToken:
    """The live token for a presented credential; TokenRefused if there is none.

    A token's own credential refused (revoked, expired) is recorded on its clinic's
    audit log, once a minute per token and reason: a partner still calling after its
    access ended is for the clinic to see.
    """
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenRefused(CREDENTIAL_REQUIRED_TEXT)
    _, prefix, secret = parts
    if not _PREFIX.fullmatch(prefix):
        # Not one this server made (token_hex(4)); a NUL in it is an error in PostgreSQL.
        raise TokenRefused(CREDENTIAL_REQUIRED_TEXT)
    found = _token_with_tenant(prefix)
    token = found[0] if found is not None else None
    expected = token.secret_hash if token is not None else _hash("")
    if not hmac.compare_digest(expected, _hash(secret)) or found is None:
        # Not audited: whoever sent it proved nothing, and work done only for a prefix
        # that exists would tell by its timing which prefixes do.
        raise TokenRefused(CREDENTIAL_REQUIRED_TEXT)
    token, creator_roles = found
    holder = Actor.for_token(token, ip=ip)
    if token.revoked_at is not None:
        _refusal_audited(token, "revoked", holder, now=now)
        raise TokenRefused(CREDENTIAL_REVOKED_TEXT)
    if token.expires_at and token.expires_at <= now:
        _refusal_audited(token, "expired", holder, now=now)
        raise TokenRefused(CREDENTIAL_EXPIRED_TEXT.format(date=token.expires_at.date().isoformat()))
    if not token.tenant.is_active:
        raise TokenRefused(CREDENTIAL_REQUIRED_TEXT)
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(tenant=token.tenant, pk=token.pk).update(last_used_at=now)
    _scopes_still_held(token, creator_roles)
    return token


def _refusal_audited(token: ApiToken, reason: str, actor: Actor, *, now: dt.datetime) -> None:
    if past_minute_limit(name=f"token-refused:{token.pk}:{reason}", limit=1, now=now):
        return
    with transaction.atomic():
        audit.record(
            actor=actor,
            action=Action.API_TOKEN_REFUSED,
            target=token,
            tenant=token.tenant,
            outcome=Outcome.DENIED,
            detail={"reason": reason},
        )


TOKEN_RATE_LIMITED_TEXT = "Too many requests for this token; retry in a minute."  # noqa: S105
TOKEN_RATE_RETRY_SECONDS = 60  # the budget is per clock minute


def api_token_rate_limited(*, token: ApiToken, now: dt.datetime) -> bool:
    """Count one request of `token` and say whether it is past this minute's budget.

    One budget per token, whichever door it comes through (DICOMweb or the REST API),
    so a partner cannot double its rate by switching. The counter lives in the shared
    cache (Redis when configured).
    """
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    if not limit:
        return False
    return past_minute_limit(name=f"ratelimit:token:{token.pk}", limit=limit, now=now)


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: Actor, now: dt.datetime) -> None:
    """Revoke a token and every live share link it made, each revocation audited; all
    or nothing (callers such as the admin's action run outside a transaction).

    The conditional UPDATE holds the token's row until commit: a link the token is
    creating meanwhile either commits first (and is revoked here) or finds it revoked.
    Revoking a revoked token again revokes any link of its still live.
    """
    # Sharing builds on tenants, so it is imported here, not at the top.
    from sharing.services import shares_lock_live, shares_revoke_created_by_token

    revoked = ApiToken.objects.filter(
        tenant=token.tenant, pk=token.pk, revoked_at__isnull=True
    ).update(revoked_at=now)
    shares_lock_live(tenant=token.tenant, created_by_token=token)  # before the audit write
    if revoked:
        token.revoked_at = now
        audit.record(
            actor=actor,
            action=Action.API_TOKEN_REVOKED,
            target=token,
            tenant=token.tenant,
            detail={"prefix": token.prefix},
        )
    shares_revoke_created_by_token(token=token, actor=actor, now=now)
