"""Audit test helpers: probe events, what a database administrator could do, verification."""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

import audit
from audit.actors import Target
from audit.models import Action
from tests.helpers import TEST_ACTOR


def record_probes(tenant, n=1, **detail):
    return [
        audit.record(
            actor=TEST_ACTOR,
            action=Action.ADMIN_ACTION,
            target=Target("probe", str(i)),
            tenant=tenant,
            detail={"i": i, **detail},
        )
        for i in range(n)
    ]


def raw_sql(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def tamper(sql, params):
    """What a database administrator could do: bypass the trigger and edit the table."""
    if connection.vendor == "postgresql":
        # Django's FKs are deferred; flush their checks so the table can be altered.
        raw_sql("SET CONSTRAINTS ALL IMMEDIATE", [])
        raw_sql("ALTER TABLE audit_auditevent DISABLE TRIGGER USER", [])
        try:
            raw_sql(sql, params)
        finally:
            raw_sql("ALTER TABLE audit_auditevent ENABLE TRIGGER USER", [])
    else:
        raw_sql("DROP TRIGGER IF EXISTS audit_event_no_update", [])
        raw_sql(sql, params)


def verify_command(capsys, tenant=None):
    """(intact, output) of `manage.py verify_audit [--tenant SLUG]`."""
    args = ["--tenant", tenant.slug] if tenant else []
    try:
        call_command("verify_audit", *args)
    except CommandError as exc:
        return False, capsys.readouterr().out + str(exc)
    return True, capsys.readouterr().out


def forged_beyond_head(event, *, ahead: int) -> None:
    """What someone with write access to the database could add: a copy of `event`,
    another actor's, `ahead` places past the chain's head (an insert, which the
    append-only triggers allow)."""
    raw_sql(
        "INSERT INTO audit_auditevent (chain_id, seq, tenant_id, created_at, actor_type, "
        "actor_id, actor_ip, action, target_type, target_id, outcome, detail, prev_hash, "
        "hash) SELECT chain_id, seq + %s, tenant_id, created_at, actor_type, 'forged', "
        "actor_ip, action, target_type, target_id, outcome, detail, prev_hash, 'x' "
        "FROM audit_auditevent WHERE id = %s",
        [ahead, event.pk],
    )
