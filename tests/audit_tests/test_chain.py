"""The audit log is append-only and hash-chained; verify_audit finds any tampering."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.test import Client

import audit
from audit.actors import Actor, Target, ip_canonical
from audit.models import Action, AppendOnlyError, AuditChain, AuditEvent
from audit.recorder import AuditDetailError
from tests.audit_tests.helpers import (
    forged_beyond_head,
    raw_sql,
    record_probes,
    tamper,
    verify_command,
)
from tests.helpers import TEST_ACTOR, make_clinic, require_postgresql


def _events(tenant):
    return list(AuditEvent.objects.for_tenant(tenant).order_by("seq"))


@pytest.mark.django_db
def test_seq_is_gapless_per_clinic_and_links_hashes(clinic, other_clinic):
    before = len(_events(clinic))
    record_probes(clinic, 3)
    record_probes(other_clinic, 2)

    ours = _events(clinic)

    assert [e.seq for e in ours] == list(range(1, before + 4))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(ours))
    assert ours[0].prev_hash == ""
    chain = AuditChain.objects.get(tenant=clinic)
    assert (chain.last_seq, chain.last_hash) == (ours[-1].seq, ours[-1].hash)


@pytest.mark.django_db
def test_a_batch_is_stored_exactly_as_returned_and_advances_the_head(clinic, capsys):
    entries = [
        audit.Entry(
            action=Action.INSTANCE_STORED, target=Target("instance", str(i)), detail={"i": i}
        )
        for i in range(3)
    ]

    returned = audit.record_many(actor=TEST_ACTOR, tenant=clinic, entries=entries)

    stored = {e.pk: e for e in _events(clinic)}
    for event in returned:
        row = stored[event.pk]
        assert (row.seq, row.hash, row.prev_hash) == (event.seq, event.hash, event.prev_hash)
        assert (row.target_id, row.detail, row.created_at) == (
            event.target_id,
            event.detail,
            event.created_at,
        )
    chain = AuditChain.objects.get(tenant=clinic)
    assert (chain.last_seq, chain.last_hash) == (returned[-1].seq, returned[-1].hash)
    assert verify_command(capsys, clinic)[0]


@pytest.mark.django_db
def test_events_without_a_clinic_go_to_the_platform_chain(db):
    event = audit.record(
        actor=Actor.system("tests"), action=Action.LOGIN_FAILED, target=None, tenant=None
    )

    assert event.chain.key == "platform"
    assert event.tenant_id is None


@pytest.mark.django_db
def test_detail_must_be_plain_json(clinic):
    with pytest.raises(AuditDetailError):
        audit.record(
            actor=TEST_ACTOR,
            action=Action.ADMIN_ACTION,
            target=None,
            tenant=clinic,
            detail={"blob": b"pixels"},
        )


@pytest.mark.django_db
def test_event_is_written_in_the_callers_transaction(clinic):
    before = len(_events(clinic))

    with pytest.raises(RuntimeError), transaction.atomic():
        record_probes(clinic)
        raise RuntimeError("the change failed")

    assert len(_events(clinic)) == before
    assert _verify_ok(clinic)
    # The next event chains to the head as stored, not to the one rolled back.
    record_probes(clinic)
    assert [e.seq for e in _events(clinic)] == list(range(1, before + 2))
    assert _verify_ok(clinic)


def _verify_ok(tenant):
    from audit.verify import chains_verify

    return all(report.intact for report in chains_verify(tenant_slug=tenant.slug))


@pytest.mark.django_db
def test_model_and_queryset_refuse_update_and_delete(clinic):
    (event,) = record_probes(clinic)

    event.outcome = "failure"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.for_tenant(clinic).update(outcome="failure")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.for_tenant(clinic).delete()


@pytest.mark.django_db
def test_database_trigger_rejects_update(clinic):
    (event,) = record_probes(clinic)

    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        raw_sql("UPDATE audit_auditevent SET outcome = 'failure' WHERE id = %s", [event.pk])


@pytest.mark.django_db
def test_postgresql_trigger_rejects_delete(clinic):
    require_postgresql()
    (event,) = record_probes(clinic)

    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        raw_sql("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])


@pytest.mark.django_db
def test_events_carry_no_index_another_one_already_leads_with():
    # Every audited request inserts an event; each index costs that insert.
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "audit_auditevent")
    indexed = sorted(tuple(c["columns"]) for c in constraints.values() if c["index"] or c["unique"])

    assert ("chain_id",) not in indexed and ("tenant_id",) not in indexed
    assert ("chain_id", "seq") in indexed
    assert [cols for cols in indexed if cols[0] == "tenant_id"] == [
        ("tenant_id", "actor_type", "actor_id"),
        ("tenant_id", "created_at"),
        ("tenant_id", "target_type", "target_id"),
    ]


@pytest.mark.django_db
def test_verify_audit_passes_on_an_intact_log(clinic, other_clinic, capsys):
    record_probes(clinic, 3)
    record_probes(other_clinic, 3)

    ok, out = verify_command(capsys)

    assert ok
    assert "tenant north: intact" in out
    assert "tenant south: intact" in out


@pytest.mark.django_db
def test_verify_audit_catches_an_edited_row(clinic, capsys):
    events = record_probes(clinic, 5)
    target = events[2]

    tamper("UPDATE audit_auditevent SET outcome = 'failure' WHERE id = %s", [target.pk])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"tenant north, first broken seq {target.seq}" in out


@pytest.mark.django_db
def test_verify_audit_catches_an_edited_detail(clinic, capsys):
    events = record_probes(clinic, 3)

    tamper("UPDATE audit_auditevent SET detail = %s WHERE id = %s", ['{"i": 99}', events[1].pk])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"first broken seq {events[1].seq}" in out


@pytest.mark.django_db
def test_verify_audit_catches_a_deleted_row(clinic, capsys):
    events = record_probes(clinic, 5)

    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"tenant north, first broken seq {events[2].seq}" in out


@pytest.mark.django_db
def test_verify_audit_catches_a_deleted_tail(clinic, capsys):
    events = record_probes(clinic, 3)

    tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[-1].pk])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"first broken seq {events[-1].seq}" in out


@pytest.mark.django_db
def test_an_event_written_past_the_chains_head_is_reported_and_never_shown(clinic, capsys):
    from audit.selectors import event_list

    events = record_probes(clinic, 3)
    forged_beyond_head(events[-1], ahead=1000)

    ok, out = verify_command(capsys, clinic)
    shown = list(event_list(tenant=clinic).values_list("actor_id", flat=True))

    assert not ok
    assert f"first broken seq {events[-1].seq + 1000}" in out
    assert "beyond the chain's head" in out
    assert "forged" not in shown and shown.count("tests") == 4  # tenant.created and probes


@pytest.mark.django_db
def test_verify_audit_catches_a_swapped_pair(clinic, capsys):
    events = record_probes(clinic, 5)
    first, second = events[1], events[2]

    # Swap the two rows' positions in the chain (seq), keeping everything else.
    tamper("UPDATE audit_auditevent SET seq = -seq WHERE id IN (%s, %s)", [first.pk, second.pk])
    tamper("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [second.seq, first.pk])
    tamper("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [first.seq, second.pk])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"tenant north, first broken seq {first.seq}" in out


@pytest.mark.django_db
def test_verify_audit_limits_to_one_clinic_and_rejects_unknown_slug(clinic, other_clinic, capsys):
    events = record_probes(other_clinic, 2)
    tamper("UPDATE audit_auditevent SET outcome = 'failure' WHERE id = %s", [events[0].pk])

    ok_ours, _ = verify_command(capsys, clinic)
    ok_theirs, _ = verify_command(capsys, other_clinic)

    assert ok_ours
    assert not ok_theirs
    with pytest.raises(CommandError, match="No clinic"):
        call_command("verify_audit", "--tenant", "nope")


@pytest.mark.django_db
def test_seq_is_unique_per_chain_in_the_database(clinic):
    (event,) = record_probes(clinic)

    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.create(
            chain=event.chain,
            seq=event.seq,
            tenant=clinic,
            created_at=event.created_at,
            actor_type="system",
            action=Action.ADMIN_ACTION,
            outcome="success",
            hash="0" * 64,
        )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_writers_get_gapless_unique_seqs():
    require_postgresql()
    tenant = make_clinic("busy")
    before = len(_events(tenant))
    errors: list[BaseException] = []

    def writer():
        try:
            for _ in range(10):
                record_probes(tenant)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [e.seq for e in _events(tenant)] == list(range(1, before + 41))
    assert _verify_ok(tenant)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_reads_and_rolled_back_writes_keep_the_chain_whole():
    """Reads audited on their own, changes audited in transactions that sometimes roll
    back, from several connections at once: every kept event is chained, no gaps."""
    require_postgresql()
    tenant = make_clinic("mixed")
    before = len(_events(tenant))
    errors: list[BaseException] = []

    def writer(number: int):
        try:
            for i in range(8):
                record_probes(tenant)  # a read: its own statement
                with transaction.atomic():  # a change: two events, kept
                    record_probes(tenant, n=2)
                try:
                    with transaction.atomic():  # a change that fails after auditing
                        record_probes(tenant, n=3 if (number + i) % 2 else 1)
                        raise RuntimeError("the change failed")
                except RuntimeError:
                    pass
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [e.seq for e in _events(tenant)] == list(range(1, before + 4 * 8 * 3 + 1))
    assert _verify_ok(tenant)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_read_outside_a_transaction_is_audited_in_one_durable_statement(clinic):
    """No BEGIN, lock and COMMIT round trips for a read: one statement, committed."""
    require_postgresql()
    from django.test.utils import CaptureQueriesContext

    record_probes(clinic)  # the clinic's chain exists and this process knows its head
    with CaptureQueriesContext(connection) as queries:
        (event,) = record_probes(clinic)

    assert len(queries) == 1
    assert not connection.in_atomic_block
    # Committed: another connection sees it.
    seen: list[bool] = []

    def look():
        seen.append(AuditEvent.objects.for_tenant(clinic).filter(pk=event.pk).exists())
        connection.close()

    reader = threading.Thread(target=look)
    reader.start()
    reader.join()
    assert seen == [True]
    assert _verify_ok(clinic)


@pytest.mark.django_db
def test_rechaining_without_the_audit_key_is_detected(clinic, capsys):
    """A DBA who edits a row and recomputes plain SHA-256 hashes still gets caught."""
    import hashlib

    from audit.hashing import canonical_bytes

    events = record_probes(clinic, 3)
    target = events[1]
    forged_detail = {"i": 42}
    fields = {
        "chain_key": str(clinic.pk),
        "seq": target.seq,
        "tenant_id": str(clinic.pk),
        "created_at": target.created_at,
        "actor_type": target.actor_type,
        "actor_id": target.actor_id,
        "actor_ip": target.actor_ip,
        "action": target.action,
        "target_type": target.target_type,
        "target_id": target.target_id,
        "outcome": target.outcome,
        "detail": forged_detail,
        "prev_hash": target.prev_hash,
    }
    forged_hash = hashlib.sha256(canonical_bytes(**fields)).hexdigest()

    tamper(
        "UPDATE audit_auditevent SET detail = %s, hash = %s WHERE id = %s",
        ['{"i": 42}', forged_hash, target.pk],
    )
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"first broken seq {target.seq}" in out


@pytest.mark.django_db
def test_a_removed_chain_is_reported(clinic, capsys):
    from audit.models import AuditChain

    tamper(
        "DELETE FROM audit_auditevent WHERE tenant_id = %s",
        [clinic.pk.hex if connection.vendor == "sqlite" else str(clinic.pk)],
    )
    AuditChain.objects.filter(tenant=clinic).delete()

    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert "chain missing" in out


@pytest.mark.django_db
def test_the_audit_key_is_stored_only_wrapped(clinic):
    from audit.keys import audit_key
    from audit.models import AuditKey

    key = audit_key()

    assert key not in bytes(AuditKey.objects.get(version=1).wrapped_key)


@pytest.mark.django_db
def test_a_deleted_audit_key_is_not_replaced_while_events_exist(clinic, capsys):
    from audit.keys import AuditKeyMissing, audit_key_forget

    record_probes(clinic, 2)
    raw_sql("DELETE FROM audit_auditkey", [])
    audit_key_forget()  # another process, or this one restarted

    with pytest.raises(AuditKeyMissing), transaction.atomic():
        record_probes(clinic, 1)
    ok, out = verify_command(capsys)

    assert not ok
    assert "key is missing" in out


@pytest.mark.django_db
def test_an_emptied_log_does_not_get_a_new_key_while_checkpoints_saw_the_old_one(clinic):
    from django.utils import timezone

    from audit.checkpoints import checkpoints_write
    from audit.keys import AuditKeyMissing, audit_key_forget

    record_probes(clinic, 2)
    checkpoints_write(now=timezone.now())
    tamper("DELETE FROM audit_auditevent", [])  # as TRUNCATE, which the triggers allow
    raw_sql("DELETE FROM audit_auditkey", [])
    raw_sql("UPDATE audit_auditchain SET last_seq = 0, last_hash = ''", [])
    audit_key_forget()

    with pytest.raises(AuditKeyMissing, match="checkpoints exist"), transaction.atomic():
        record_probes(clinic, 1)


@pytest.mark.django_db
def test_an_audit_key_made_in_a_rolled_back_transaction_is_not_kept(db):
    from audit.keys import audit_key
    from audit.models import AuditKey
    from imaging.keys import key_provider

    with pytest.raises(RuntimeError), transaction.atomic():
        audit_key()
        raise RuntimeError("the first audited change fails")

    key = audit_key()

    stored = AuditKey.objects.get(version=1)
    assert key == key_provider().unwrap(bytes(stored.wrapped_key), context=b"audit-chain-key|v1")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("peer", "stored"),
    [
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::FFFF:10.0.0.1", "::ffff:10.0.0.1"),
        # PostgreSQL's inet gives these back with their last 32 bits dotted.
        ("::1.2.3.4", "::102:304"),
        ("::1:0", "::1:0"),
        ("::0:ffff:1:2", "::ffff:0.1.0.2"),
        ("::2", "::2"),
        ("junk", None),
    ],
)
def test_a_peer_address_in_any_spelling_keeps_the_chain_intact(clinic, capsys, peer, stored):
    audit.record(
        actor=Actor(type=TEST_ACTOR.type, id=TEST_ACTOR.id, ip=peer),
        action=Action.ADMIN_ACTION,
        target=Target("probe", "1"),
        tenant=clinic,
        detail={},
    )

    ok, out = verify_command(capsys, clinic)

    assert ok, out
    assert ip_canonical(AuditEvent.objects.for_tenant(clinic).latest("seq").actor_ip) == stored


@pytest.mark.django_db
def test_a_removed_platform_chain_is_reported(db, capsys):
    from audit.models import AuditChain

    Client().post("/accounts/login/", {"username": "nobody@x.example", "password": "guess"})
    tamper("DELETE FROM audit_auditevent WHERE tenant_id IS NULL", [])
    AuditChain.objects.filter(key="platform").delete()

    ok, out = verify_command(capsys)

    assert not ok
    assert "platform: BROKEN at seq 1 (chain missing)" in out


@pytest.mark.django_db
def test_events_appended_while_verification_runs_are_not_reported_as_tampering(
    clinic, other_clinic, monkeypatch
):
    import audit.verify as verify

    record_probes(clinic, 3)
    record_probes(other_clinic, 3)
    real_checkpoints = verify.chain_checkpoints
    calls = []

    def checkpoints_then_traffic(*, chain_key):
        # While one chain is verified, the other clinic serves an audited request.
        if not calls:
            record_probes(other_clinic, 1)
        calls.append(chain_key)
        return real_checkpoints(chain_key=chain_key)

    monkeypatch.setattr(verify, "chain_checkpoints", checkpoints_then_traffic)

    reports = verify.chains_verify()

    assert [(r.tenant_slug, r.reason) for r in reports if not r.intact] == []
    monkeypatch.undo()
    assert all(r.intact for r in verify.chains_verify())


@pytest.mark.django_db
def test_a_removed_chain_is_not_started_again_by_the_next_event_or_the_check(clinic, capsys):
    from audit.models import AuditChain
    from audit.recorder import AuditChainMissing
    from audit.tasks import audit_chains_verify

    record_probes(clinic, 3)
    tamper(
        "DELETE FROM audit_auditevent WHERE tenant_id = %s",
        [clinic.pk.hex if connection.vendor == "sqlite" else str(clinic.pk)],
    )
    AuditChain.objects.filter(tenant=clinic).delete()

    with pytest.raises(AuditChainMissing), transaction.atomic():
        record_probes(clinic, 1)  # any audited action of the clinic's
    audit_chains_verify()
    ok, out = verify_command(capsys, clinic)

    assert not ok and "chain missing" in out
    assert not AuditChain.objects.filter(tenant=clinic).exists()
    reported = AuditEvent.objects.unscoped(reason="the platform chain").filter(
        chain__key="platform", action=Action.AUDIT_VERIFIED
    )
    assert reported.filter(detail__tenant=str(clinic.pk), outcome="failure").exists()
