"""The one write path into the audit log."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor, Target, ip_canonical
from audit.hashing import event_hash
from audit.keys import audit_key
from audit.models import PLATFORM_CHAIN_KEY, Action, AuditChain, AuditEvent, Outcome
from portal import rows

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from django.db import models

    from tenants.models import Tenant

_DETAIL_SCALARS = (str, int, bool, type(None))
MAX_DETAIL_BYTES = 4096


class AuditDetailError(ValueError):
    """Detail must be small JSON of ids and counts."""


def _check_detail(value: Any, depth: int = 0) -> None:
    if depth > 4:
        raise AuditDetailError("audit detail nests too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailError("audit detail keys must be strings")
            _check_detail(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_detail(item, depth + 1)
    elif not isinstance(value, _DETAIL_SCALARS):
        raise AuditDetailError(f"audit detail cannot hold {type(value).__name__}")


def chain_key_for(tenant: Tenant | None) -> str:
    return str(tenant.pk) if tenant is not None else PLATFORM_CHAIN_KEY


class AuditChainMissing(RuntimeError):
    """A clinic's chain row is gone: it was removed, and is not silently started again."""


def _locked_head(tenant: Tenant | None, *, first_action: Action) -> tuple[int, int, str]:
    """The chain's (id, last seq, last hash), its row locked until the transaction ends.

    The row lock serialises writers per clinic on PostgreSQL; on SQLite the IMMEDIATE
    transaction mode already holds the database write lock. A clinic's chain starts
    with its `tenant.created` event; a missing chain at any other event was removed,
    and starting a new one would hide that from verification: the write fails instead.
    """
    key = chain_key_for(tenant)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with rows.prepared_cursor() as cursor:
        cursor.execute(f"{_HEAD_SQL}{lock}", [key])
        row = cursor.fetchone()
    if row is None:  # the clinic's first event
        if tenant is not None and first_action != Action.TENANT_CREATED:
            logger.error("audit chain %s is missing; nothing is recorded in it", key)
            raise AuditChainMissing(f"The audit chain {key} is missing.")
        chain, _ = AuditChain.objects.select_for_update().get_or_create(
            key=key, defaults={"tenant": tenant}
        )
        return chain.pk, chain.last_seq, chain.last_hash
    return row


def _read_head(key: str) -> tuple[int, int, str] | None:
    with rows.prepared_cursor() as cursor:
        cursor.execute(_HEAD_SQL, [key])
        return cursor.fetchone()


# Every audited request appends, so these are precompiled statements rather than ORM
# queries (whose compilation cost more than the round trip). Identifiers come from the
# models' metadata; every value is a parameter.
_CHAIN_TABLE = AuditChain._meta.db_table
_HEAD_SQL = f"SELECT id, last_seq, last_hash FROM {_CHAIN_TABLE} WHERE key = %s"  # noqa: S608
_ADVANCE_SQL = f"UPDATE {_CHAIN_TABLE} SET last_seq = %s, last_hash = %s WHERE id = %s"  # noqa: S608
_EVENT_FIELDS = [f for f in AuditEvent._meta.concrete_fields if not f.primary_key]
_EVENT_COLUMNS = ", ".join(f.column for f in _EVENT_FIELDS)
# PostgreSQL, under the row lock: insert the events and advance the head in one
# statement (a data-modifying CTE).
_APPEND_SQL = (
    f"WITH advanced AS ({_ADVANCE_SQL}) INSERT INTO {AuditEvent._meta.db_table} "  # noqa: S608
    f"({_EVENT_COLUMNS}) VALUES "
)
_APPEND_ROW = "(" + ", ".join(["%s"] * len(_EVENT_FIELDS)) + ")"
# PostgreSQL, without a lock: advance the head only if it is still the one the events
# were chained to, and insert them only if it was; one statement, so both or neither.
_SWAP_SQL = (
    f"WITH advanced AS ({_ADVANCE_SQL} AND last_seq = %s AND last_hash = %s RETURNING id) "  # noqa: S608
    f"INSERT INTO {AuditEvent._meta.db_table} ({_EVENT_COLUMNS}) "
    "SELECT * FROM (VALUES {rows}) AS appended WHERE EXISTS (SELECT 1 FROM advanced) "
    "RETURNING id"
)
# Each chain's head as this process last wrote or read it. Only a guess: the swap
# checks it against the row, and a stale one costs a re-read and another try.
_HEADS: dict[str, tuple[int, int, str]] = {}
_SWAP_ATTEMPTS = 3


@functools.cache
def _swap_row() -> str:
    # PostgreSQL only. In a VALUES list it cannot infer the columns' types, so each
    # value is cast to its column's.
    return "(" + ", ".join(f"%s::{f.cast_db_type(connection)}" for f in _EVENT_FIELDS) + ")"


def _values(events: list[AuditEvent]) -> list[Any]:
    values: list[Any] = []
    for event in events:
        values += [f.get_db_prep_save(getattr(event, f.attname), connection) for f in _EVENT_FIELDS]
    return values


def _saved(events: list[AuditEvent], ids: list[int]) -> None:
    # A multi-row INSERT returns its rows in VALUES order (bulk_create relies on it too).
    for event, pk in zip(events, ids, strict=True):
        event.pk = pk
        event._state.adding = False
        event._state.db = connection.alias


def _append(events: list[AuditEvent], *, chain_id: int, seq: int, last_hash: str) -> None:
    """Insert the events and advance the chain head to `seq` and `last_hash`, under the
    head's row lock.

    On PostgreSQL this is one round trip; elsewhere the ORM inserts, then the head is
    advanced.
    """
    if connection.vendor != "postgresql":
        if len(events) == 1:
            events[0].save(force_insert=True)
        else:
            AuditEvent.objects.bulk_create(events)
        with connection.cursor() as cursor:
            cursor.execute(_ADVANCE_SQL, [seq, last_hash, chain_id])
        return
    with rows.prepared_cursor() as cursor:
        cursor.execute(
            _APPEND_SQL + ", ".join([_APPEND_ROW] * len(events)) + " RETURNING id",
            [seq, last_hash, chain_id, *_values(events)],
        )
        _saved(events, [pk for (pk,) in cursor.fetchall()])


def _append_if_head(events: list[AuditEvent], *, head: tuple[int, int, str]) -> bool:
    """Append the events if the chain's head is still `head`; False if it moved on.

    One statement, and outside a transaction its own: the BEGIN, the lock and the
    COMMIT of the locked path are three round trips saved on every audited read. A
    concurrent writer's lock is waited for, then the head compared with what it wrote.
    """
    chain_id, seq, last_hash = head
    sql = _SWAP_SQL.format(rows=", ".join([_swap_row()] * len(events)))
    params = [events[-1].seq, events[-1].hash, chain_id, seq, last_hash, *_values(events)]
    with rows.prepared_cursor() as cursor:
        cursor.execute(sql, params)
        ids = [pk for (pk,) in cursor.fetchall()]
    if not ids:
        return False
    _saved(events, ids)
    return True


def record(
    *,
    actor: Actor,
    action: Action,
    target: models.Model | Target | None,
    tenant: Tenant | None,
    outcome: Outcome = Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEvent:
    """Append one event to the clinic's chain, inside the caller's transaction.

    `detail` carries ids, counts and codes, never names, dates of birth or tag values.
    """
    entry = Entry(action=action, target=target, outcome=outcome, detail=detail)
    return record_many(actor=actor, tenant=tenant, entries=[entry], at=at)[0]


@dataclass(frozen=True, slots=True)
class Entry:
    """One event of a `record_many` call (same actor, clinic and time)."""

    action: Action
    target: models.Model | Target | None
    outcome: Outcome = Outcome.SUCCESS
    detail: dict[str, Any] | None = None


def record_many(
    *,
    actor: Actor,
    tenant: Tenant | None,
    entries: list[Entry],
    at: dt.datetime | None = None,
) -> list[AuditEvent]:
    """Append several events by one actor in one go: one statement on PostgreSQL.

    For work done in bulk (a STOW-RS request storing many instances); the events and
    their hash chain are exactly what as many `record` calls would have written.
    """
    prepared = []
    for entry in entries:
        detail = dict(entry.detail or {})
        _check_detail(detail)
        prepared.append((Action(entry.action), Target.of(entry.target), entry.outcome, detail))
    created_at = at or timezone.now()
    chain_key = chain_key_for(tenant)

    def chained(head: tuple[int, int, str]) -> list[AuditEvent]:
        chain_id, seq, last_hash = head
        events = []
        for action, target_ref, outcome, detail in prepared:
            seq += 1
            event = AuditEvent(
                chain_id=chain_id,
                seq=seq,
                tenant=tenant,
                created_at=created_at,
                actor_type=actor.type,
                actor_id=actor.id,
                actor_ip=actor.ip,
                action=action,
                target_type=target_ref.type,
                target_id=target_ref.id,
                outcome=outcome,
                detail=detail,
                prev_hash=last_hash,
            )
            event.hash = last_hash = hash_of(event, chain_key=chain_key)
            events.append(event)
        return events

    # No savepoint: an audit write that fails must fail the caller's transaction too.
    # (Inside the caller's transaction, atomic(savepoint=False) issues no SQL.)
    if connection.vendor == "postgresql":
        for _ in range(_SWAP_ATTEMPTS):
            head = _HEADS.get(chain_key) or _read_head(chain_key)
            if head is None:  # the clinic's first event: create its chain, locked
                break
            events = chained(head)
            if connection.in_atomic_block:
                with transaction.atomic(savepoint=False):
                    appended = _append_if_head(events, head=head)
            else:
                appended = _append_if_head(events, head=head)
            if appended:
                _HEADS[chain_key] = (head[0], events[-1].seq, events[-1].hash)
                return events
            _HEADS.pop(chain_key, None)
    with transaction.atomic(savepoint=False):
        head = _locked_head(tenant, first_action=prepared[0][0])
        events = chained(head)
        _append(events, chain_id=head[0], seq=events[-1].seq, last_hash=events[-1].hash)
    if connection.vendor == "postgresql":
        _HEADS[chain_key] = (head[0], events[-1].seq, events[-1].hash)
    return events


def hash_of(event: AuditEvent, *, chain_key: str) -> str:
    return event_hash(
        key=audit_key(),
        chain_key=chain_key,
        seq=event.seq,
        tenant_id=str(event.tenant_id or ""),
        created_at=event.created_at,
        actor_type=str(event.actor_type),
        actor_id=event.actor_id,
        # In the spelling it was written with (Django's): PostgreSQL's inet gives some
        # IPv6 addresses back otherwise (`::102:304` as `::1.2.3.4`).
        actor_ip=ip_canonical(event.actor_ip),
        action=str(event.action),
        target_type=event.target_type,
        target_id=event.target_id,
        outcome=str(event.outcome),
        detail=event.detail,
        prev_hash=event.prev_hash,
    )


def record_for_user(
    *,
    user: Any,
    actor: Actor,
    action: Action,
    outcome: Outcome = Outcome.SUCCESS,
    detail: dict[str, Any] | None = None,
) -> list[AuditEvent]:
    """Record an event about a person in every clinic they belong to (else the platform).

    Sign-in, second-factor and session events concern the person, not one clinic; each
    clinic's privacy officer needs to see them for that clinic's staff and patients.
    """
    from tenants.selectors import user_tenants

    tenants: list[Tenant | None] = list(user_tenants(user=user)) if user is not None else []
    return [
        record(
            actor=actor, action=action, target=user, tenant=tenant, outcome=outcome, detail=detail
        )
        for tenant in tenants or [None]
    ]
