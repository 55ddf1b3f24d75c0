"""Checkpoints of the audit chains outside the database (audit.checkpoints).

The threat: someone who can write the database deletes the newest events and sets the
chain's head back, so every remaining hash still checks out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.checkpoints import checkpoints_write
from audit.hashing import canonical_bytes
from audit.keys import audit_key
from audit.models import AuditChain, AuditEvent
from audit.tasks import audit_checkpoints_write
from tests.audit_tests.helpers import raw_sql, record_probes, tamper, verify_command
from tests.helpers import s3_client

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)


def _checkpoint_files(chain_key: str) -> list:
    return sorted((settings.AUDIT_CHECKPOINT_ROOT / chain_key).glob("*.json"))


def _pk(tenant) -> str:
    return tenant.pk.hex if connection.vendor == "sqlite" else str(tenant.pk)


def _truncate(tenant, *, keep: int) -> None:
    """Delete every event after seq `keep` and rewind the head to it, as a DBA could."""
    kept = AuditEvent.objects.for_tenant(tenant).get(seq=keep)
    tamper("DELETE FROM audit_auditevent WHERE tenant_id = %s AND seq > %s", [_pk(tenant), keep])
    raw_sql(
        "UPDATE audit_auditchain SET last_seq = %s, last_hash = %s WHERE key = %s",
        [keep, kept.hash, str(tenant.pk)],
    )


@pytest.mark.django_db
def test_a_checkpoint_pins_each_chain_head_without_phi(clinic, other_clinic):
    record_probes(clinic, 3)
    record_probes(other_clinic, 2)

    written, _ = checkpoints_write(now=NOW)

    chains = {chain.key: chain for chain in AuditChain.objects.all()}
    assert written == len([chain for chain in chains.values() if chain.last_seq])
    for tenant in (clinic, other_clinic):
        chain = chains[str(tenant.pk)]
        (path,) = _checkpoint_files(chain.key)
        document = json.loads(path.read_text())
        assert document["checkpoint"] == {
            "v": 1,
            "chain": chain.key,
            "seq": chain.last_seq,
            "hash": chain.last_hash,
            "at": "2026-11-23T09:30:00Z",
        }
        assert tenant.name not in path.read_text() and tenant.slug not in path.read_text()
        assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.django_db
def test_a_chain_is_checkpointed_again_only_when_its_head_moved(clinic, other_clinic):
    record_probes(clinic, 2)
    checkpoints_write(now=NOW)

    unchanged, _ = checkpoints_write(now=NOW + dt.timedelta(minutes=5))
    record_probes(clinic, 1)
    moved, _ = checkpoints_write(now=NOW + dt.timedelta(minutes=10))

    assert unchanged == 0
    assert moved == 1
    assert len(_checkpoint_files(str(clinic.pk))) == 2
    assert len(_checkpoint_files(str(other_clinic.pk))) == 1


@pytest.mark.django_db
def test_a_deleted_tail_with_a_rewound_head_is_caught_by_the_checkpoint(clinic, capsys):
    events = record_probes(clinic, 5)
    checkpoints_write(now=NOW)

    _truncate(clinic, keep=events[2].seq)
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"first broken seq {events[3].seq}" in out
    assert "the checkpoint of 2026-11-23 09:30 UTC saw the chain reach seq" in out


@pytest.mark.django_db
def test_events_after_the_newest_checkpoint_are_the_window_left_open(clinic, other_clinic, capsys):
    """What checkpoints cannot catch, stated: a deletion within one interval."""
    record_probes(clinic, 2)
    checkpointed = record_probes(other_clinic, 2)
    checkpoints_write(now=NOW)
    record_probes(other_clinic, 3)

    _truncate(other_clinic, keep=checkpointed[-1].seq)
    ok, _ = verify_command(capsys, other_clinic)

    assert ok


@pytest.mark.django_db
def test_a_truncated_chain_is_not_checkpointed_again_and_is_logged(clinic, caplog):
    events = record_probes(clinic, 4)
    checkpoints_write(now=NOW)
    _truncate(clinic, keep=events[1].seq)

    with caplog.at_level(logging.ERROR, logger="audit.checkpoints"):
        written, _ = checkpoints_write(now=NOW + dt.timedelta(minutes=5))

    assert written == 0
    assert len(_checkpoint_files(str(clinic.pk))) == 1
    assert f"no longer matches its checkpoint at seq {events[-1].seq}" in caplog.text


@pytest.mark.django_db
def test_the_command_fails_naming_a_chain_it_would_not_checkpoint_again(clinic, capsys):
    events = record_probes(clinic, 4)
    checkpoints_write(now=NOW)
    _truncate(clinic, keep=events[1].seq)

    with pytest.raises(CommandError) as refused:
        call_command("checkpoint_audit")

    assert f"{clinic.pk} at seq {events[-1].seq}" in str(refused.value)
    assert "checkpoints written: 0" in capsys.readouterr().out


@pytest.mark.django_db
def test_a_truncated_chain_grown_past_its_checkpoint_is_not_pinned_again(clinic, caplog, capsys):
    events = record_probes(clinic, 6)
    checkpoints_write(now=NOW)
    _truncate(clinic, keep=events[2].seq)
    record_probes(clinic, 6)  # new events, the head now past the checkpoint's seq

    with caplog.at_level(logging.ERROR, logger="audit.checkpoints"):
        written, _ = checkpoints_write(now=NOW + dt.timedelta(minutes=5))
    ok, out = verify_command(capsys, clinic)

    assert written == 0
    assert len(_checkpoint_files(str(clinic.pk))) == 1
    assert f"no longer matches its checkpoint at seq {events[-1].seq}" in caplog.text
    assert not ok
    assert f"first broken seq {events[-1].seq}" in out


@pytest.mark.django_db
def test_an_event_rechained_with_the_audit_key_differs_from_its_checkpoint(clinic, capsys):
    """Even a holder of the audit key cannot rewrite what a checkpoint saw."""
    events = record_probes(clinic, 3)
    checkpoints_write(now=NOW)
    last = events[-1]
    fields = {
        "chain_key": str(clinic.pk),
        "seq": last.seq,
        "tenant_id": str(clinic.pk),
        "created_at": last.created_at,
        "actor_type": last.actor_type,
        "actor_id": last.actor_id,
        "actor_ip": last.actor_ip,
        "action": last.action,
        "target_type": last.target_type,
        "target_id": last.target_id,
        "outcome": last.outcome,
        "detail": {"i": 99},
        "prev_hash": last.prev_hash,
    }
    forged = hmac.new(audit_key(), canonical_bytes(**fields), hashlib.sha256).hexdigest()

    tamper(
        "UPDATE audit_auditevent SET detail = %s, hash = %s WHERE id = %s",
        ['{"i": 99}', forged, last.pk],
    )
    raw_sql("UPDATE audit_auditchain SET last_hash = %s WHERE key = %s", [forged, str(clinic.pk)])
    ok, out = verify_command(capsys, clinic)

    assert not ok
    assert f"first broken seq {last.seq}" in out
    assert "event differs from the checkpoint of 2026-11-23 09:30 UTC" in out


@pytest.mark.django_db
@pytest.mark.parametrize(
    "planted_text",
    [
        '{"checkpoint": {"seq": 1000000000000}, "mac": "00"}',  # no MAC key to sign with
        "not JSON at all",
        '["a", "list"]',
    ],
)
def test_a_planted_checkpoint_does_not_stop_the_real_ones(clinic, capsys, planted_text):
    record_probes(clinic, 2)
    checkpoints_write(now=NOW)
    planted = settings.AUDIT_CHECKPOINT_ROOT / str(clinic.pk) / f"{10**12:020d}.json"
    planted.write_text(planted_text)
    record_probes(clinic, 1)

    written, _ = checkpoints_write(now=NOW + dt.timedelta(minutes=5))
    ok, out = verify_command(capsys, clinic)

    assert written == 1
    assert not ok
    assert "BROKEN at seq 1000000000000 (a checkpoint of this chain does not verify" in out


@pytest.mark.django_db
def test_an_altered_checkpoint_is_reported_and_an_older_one_still_pins(clinic, capsys):
    events = record_probes(clinic, 2)
    checkpoints_write(now=NOW)
    events += record_probes(clinic, 2)
    checkpoints_write(now=NOW + dt.timedelta(minutes=5))
    _, newer = _checkpoint_files(str(clinic.pk))
    document = json.loads(newer.read_text())
    document["checkpoint"]["seq"] = 1  # a forger lowering the mark, without the MAC key
    newer.write_text(json.dumps(document))

    ok, out = verify_command(capsys, clinic)
    _truncate(clinic, keep=events[0].seq)
    still_pinned, out_after = verify_command(capsys, clinic)

    assert not ok
    assert "does not verify (altered or forged)" in out
    assert not still_pinned
    assert f"first broken seq {events[1].seq}" in out_after


@pytest.mark.django_db
def test_a_removed_chain_that_had_checkpoints_is_reported(db, capsys):
    record_probes(None, 2)  # the platform's chain
    checkpoints_write(now=NOW)

    tamper("DELETE FROM audit_auditevent WHERE tenant_id IS NULL", [])
    AuditChain.objects.filter(key="platform").delete()
    ok, out = verify_command(capsys)

    assert not ok
    assert "platform: BROKEN at seq 1 (chain missing (it has checkpoints))" in out


@pytest.mark.django_db
def test_the_beat_task_and_the_command_write_checkpoints(clinic, capsys):
    record_probes(clinic, 1)

    first = audit_checkpoints_write.delay().get()
    record_probes(clinic, 1)
    call_command("checkpoint_audit")

    assert first >= 1
    assert "checkpoints written: 1" in capsys.readouterr().out
    assert len(_checkpoint_files(str(clinic.pk))) == 2
    schedule = settings.CELERY_BEAT_SCHEDULE["audit-checkpoints-write"]
    assert schedule["task"] == audit_checkpoints_write.name


@pytest.mark.django_db
def test_checkpoints_go_to_an_s3_bucket_when_configured(clinic, settings, s3_endpoint, capsys):
    from imaging import storage as storage_module

    settings.STORAGE_S3_ENDPOINT_URL = s3_endpoint
    settings.STORAGE_S3_ACCESS_KEY_ID = "testing"
    settings.STORAGE_S3_SECRET_ACCESS_KEY = "testing"
    settings.AUDIT_CHECKPOINT_S3_BUCKET = f"checkpoints-{uuid.uuid4().hex[:12]}"
    storage_module._s3_storage.cache_clear()
    client = s3_client(s3_endpoint)
    client.create_bucket(
        Bucket=settings.AUDIT_CHECKPOINT_S3_BUCKET,
        CreateBucketConfiguration={"LocationConstraint": "eu-central-1"},
    )
    events = record_probes(clinic, 3)

    try:
        checkpoints_write(now=NOW)
        listed = client.list_objects_v2(Bucket=settings.AUDIT_CHECKPOINT_S3_BUCKET)
        _truncate(clinic, keep=events[0].seq)
        ok, out = verify_command(capsys, clinic)
    finally:
        storage_module._s3_storage.cache_clear()

    keys = [item["Key"] for item in listed["Contents"]]
    assert f"{clinic.pk}/{events[-1].seq:020d}.json" in keys
    assert not _checkpoint_files(str(clinic.pk))  # nothing went to the local folder
    assert not ok
    assert f"first broken seq {events[1].seq}" in out
