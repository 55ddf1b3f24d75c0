"""Clinic keys and study data keys (see imaging.crypto for the hierarchy)."""

from __future__ import annotations

from functools import partial

from django.db import IntegrityError as DbIntegrityError
from django.db import transaction

from imaging.crypto import IntegrityError, new_key, unwrap_key, wrap_key
from imaging.keys import key_provider
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
