"""Clinic keys and study data keys (see imaging.crypto for the hierarchy)."""

from __future__ import annotations

from functools import partial

from django.db import IntegrityError as DbIntegrityError
from django.db import connection, transaction

from imaging.crypto import IntegrityError, new_key, unwrap_key, wrap_key
from imaging.keys import KeyProvider, key_provider
from imaging.models import Study, TenantKey
from tenants.models import Tenant

_unwrapped: dict[tuple[str, int], bytes] = {}


def _tenant_key_context(tenant_id: object, version: int) -> bytes:
    return b"tenant-key|" + str(tenant_id).encode() + b"|" + str(version).encode()


def _dek_context(study_id: object, version: int) -> bytes:
    return b"study-dek|" + str(study_id).encode() + b"|" + str(version).encode()


def tenant_key_active(*, tenant: Tenant) -> tuple[int, bytes]:
    """(version, key) of the clinic's active key, created on first use."""
    row = TenantKey.objects.for_tenant(tenant).filter(state=TenantKey.State.ACTIVE).first()
    if row is None:
        try:
            with transaction.atomic():
                row = TenantKey.objects.create(
                    tenant=tenant,
                    version=1,
                    wrapped_key=key_provider().wrap(
                        new_key(), context=_tenant_key_context(tenant.pk, 1)
                    ),
                )
        except DbIntegrityError:  # another request created it first
            row = TenantKey.objects.for_tenant(tenant).get(state=TenantKey.State.ACTIVE)
    return row.version, _tenant_key(tenant_id=tenant.pk, version=row.version, row=row)


def _tenant_key(*, tenant_id: object, version: int, row: TenantKey | None = None) -> bytes:
    cache_key = (str(tenant_id), version)
    key = _unwrapped.get(cache_key)
    if key is None:
        if row is None:
            try:
                row = TenantKey.objects.filter(tenant_id=tenant_id, version=version).get()
            except TenantKey.DoesNotExist:
                raise IntegrityError(f"clinic key version {version} is missing") from None
        key = key_provider().unwrap(
            bytes(row.wrapped_key), context=_tenant_key_context(tenant_id, version)
        )
        # Remembered only once the row is known to be committed: a key created in a
        # transaction that rolls back exists nowhere, and data keys wrapped under it
        # would be lost for good (another process makes the clinic a different key).
        transaction.on_commit(partial(_unwrapped.__setitem__, cache_key, key))
    return key


def wrapped_keys_check(provider: KeyProvider) -> int:
    """Unwrap the audit key and the oldest clinic key with `provider`; returns how many.

    Every key the provider wraps was wrapped by the same master key, so these two prove
    it is the one in use. Raises IntegrityError when it is not. Tables not migrated yet
    hold no key.
    """
    from audit.keys import CONTEXT
    from audit.models import AuditKey

    if TenantKey._meta.db_table not in connection.introspection.table_names():
        return 0
    wrapped: list[tuple[bytes, bytes]] = []
    audit_row = AuditKey.objects.filter(version=1).first()
    if audit_row is not None:
        wrapped.append((bytes(audit_row.wrapped_key), CONTEXT))
    clinic_row = (
        TenantKey.objects.unscoped(reason="does the master key unwrap the clinics' keys?")
        .order_by("created_at", "pk")
        .first()
    )
    if clinic_row is not None:
        context = _tenant_key_context(clinic_row.tenant_id, clinic_row.version)
        wrapped.append((bytes(clinic_row.wrapped_key), context))
    for key, context in wrapped:
        provider.unwrap(key, context=context)
    return len(wrapped)


def wrapped_keys_exist() -> bool:
    """Whether the database holds keys wrapped by the key provider (audit or clinic)."""
    from audit.models import AuditKey

    if TenantKey._meta.db_table not in connection.introspection.table_names():
        return False
    clinic_keys = TenantKey.objects.unscoped(reason="are any clinic keys wrapped?")
    return AuditKey.objects.exists() or clinic_keys.exists()


def tenant_key(*, tenant: Tenant, version: int) -> bytes:
    """The clinic key of one version, for small secrets wrapped under it directly."""
    return _tenant_key(tenant_id=tenant.pk, version=version)


def study_dek_new(
    *, tenant: Tenant, study_id: object, active_key: tuple[int, bytes] | None = None
) -> tuple[bytes, bytes, int]:
    """A fresh data key for a study: (key, wrapped key, tenant key version).

    `active_key` is `tenant_key_active(...)` when the caller creates several studies.
    """
    version, tenant_key = active_key or tenant_key_active(tenant=tenant)
    dek = new_key()
    return dek, wrap_key(kek=tenant_key, key=dek, context=_dek_context(study_id, version)), version


def study_dek(*, study: Study) -> bytes:
    tenant_key = _tenant_key(tenant_id=study.tenant_id, version=study.key_version)
    return unwrap_key(
        kek=tenant_key,
        wrapped=bytes(study.wrapped_dek),
        context=_dek_context(study.pk, study.key_version),
    )


def keyring_forget() -> None:
    """Drop unwrapped keys held in memory (tests, key rotation)."""
    _unwrapped.clear()
