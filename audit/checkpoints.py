"""Checkpoints of each audit chain's head, kept outside the database.

The events and the chain's head row live in one database. Someone who can write it
(a stolen database credential, a rogue administrator) can delete the newest events and
set the head back to the event before them: every remaining hash still checks out, and
the accesses those events recorded are gone without a trace. A checkpoint pins a chain
as it was: its key, last seq and last hash, MACed under a key derived from the audit
key (which the database does not hold), written to storage the database's credentials
cannot rewrite. Verification then fails if the chain no longer reaches a checkpoint's
seq or holds another event there; the chain links pin everything before it.

Production points `AUDIT_CHECKPOINT_S3_BUCKET` at a bucket with S3 Object Lock
(compliance mode), so that not even the portal's own credentials can delete a
checkpoint. The embedded default writes under `PORTAL_DATA_DIR/audit-checkpoints/`.
Checkpoints hold ids, counts, hashes and times, never PHI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import logging
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage

from audit.keys import audit_key
from audit.models import AuditChain, AuditEvent
from imaging.storage import PrivateFileSystemStorage, bucket_storage

logger = logging.getLogger(__name__)

VERSION = 1
_MAC_CONTEXT = b"audit-checkpoint|v1"
_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_key: str
    seq: int
    hash: str
    written_at: dt.datetime
    valid: bool = True  # False: its MAC does not verify or it cannot be read

    @property
    def when(self) -> str:
        return self.written_at.strftime("%Y-%m-%d %H:%M UTC")


def checkpoint_storage() -> Storage:
    """Where checkpoints go: an S3 bucket when configured, else a local folder."""
    if settings.AUDIT_CHECKPOINT_S3_BUCKET:
        return bucket_storage(settings.AUDIT_CHECKPOINT_S3_BUCKET)
    return _local_storage(str(settings.AUDIT_CHECKPOINT_ROOT))


@cache
def _local_storage(root: str) -> Storage:
    return PrivateFileSystemStorage(root)


def _mac_key() -> bytes:
    # Its own key, derived from the audit key: a checkpoint MAC is never an event hash.
    return hmac.new(audit_key(), _MAC_CONTEXT, hashlib.sha256).digest()


def _payload(*, chain_key: str, seq: int, last_hash: str, written_at: str) -> bytes:
    fields = {"v": VERSION, "chain": chain_key, "seq": seq, "hash": last_hash, "at": written_at}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _name(chain_key: str, seq: int) -> str:
    # Zero-padded: names sort in seq order.
    return f"{chain_key}/{seq:020d}{_SUFFIX}"


class CheckpointsWritten(NamedTuple):
    written: int
    # "<chain key> at seq N": chains that no longer hold the event their checkpoint pinned.
    refused: tuple[str, ...]


def checkpoints_write(*, now: dt.datetime) -> CheckpointsWritten:
    """Write a checkpoint of every chain whose head moved since its last one.

    A chain that no longer matches its newest valid checkpoint (behind it, or another
    event at its seq) is not checkpointed again (that would only hide the gap): it is
    logged and returned among the refused, and `verify_audit` reports it.
    """
    storage = checkpoint_storage()
    key = _mac_key()
    written_at = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    written, refused = 0, []
    for chain_key, last_seq, last_hash in AuditChain.objects.order_by("id").values_list(
        "key", "last_seq", "last_hash"
    ):
        # The newest that verifies: a planted file with a huge seq must not stop this.
        pinned = _checkpoints(storage, chain_key, key).newest_valid
        if pinned is not None and not _still_holds(pinned, last_seq=last_seq, last_hash=last_hash):
            logger.error(
                "audit chain %s no longer matches its checkpoint at seq %s (head at seq %s)",
                chain_key,
                pinned.seq,
                last_seq,
            )
            refused.append(f"{chain_key} at seq {pinned.seq}")
            continue
        if last_seq == 0 or (pinned is not None and last_seq == pinned.seq):
            continue
        payload = _payload(
            chain_key=chain_key, seq=last_seq, last_hash=last_hash, written_at=written_at
        )
        mac = hmac.new(key, payload, hashlib.sha256).hexdigest()
        document = {"checkpoint": json.loads(payload), "mac": mac}
        storage.save(_name(chain_key, last_seq), ContentFile(json.dumps(document).encode()))
        written += 1
    return CheckpointsWritten(written, tuple(refused))


def _still_holds(pinned: Checkpoint, *, last_seq: int, last_hash: str) -> bool:
    """Whether the chain still holds, at the checkpoint's seq, the event it pinned.

    Comparing the head alone is not enough: a tail deleted and the head rewound, then
    grown past the checkpoint by new events, would be pinned afresh and the gap hidden
    from verification, which reads the newest checkpoint.
    """
    if last_seq < pinned.seq:
        return False
    if last_seq == pinned.seq:
        return last_hash == pinned.hash
    held = (
        AuditEvent.objects.unscoped(reason="a checkpoint compares its chain's event")
        .filter(chain__key=pinned.chain_key, seq=pinned.seq)
        .values_list("hash", flat=True)
        .first()
    )
    return held == pinned.hash


def _seqs(storage: Storage, chain_key: str) -> list[int]:
    try:
        _, files = storage.listdir(chain_key)
    except FileNotFoundError:
        return []
    seqs = []
    for name in files:
        stem = name.removesuffix(_SUFFIX)
        if name.endswith(_SUFFIX) and stem.isdigit():
            seqs.append(int(stem))
    return sorted(seqs)


def _read(storage: Storage, chain_key: str, seq: int, key: bytes) -> Checkpoint:
    """The checkpoint stored under (chain, seq); `valid` is False if it does not verify."""
    unreadable = Checkpoint(chain_key, seq, "", dt.datetime.min.replace(tzinfo=dt.UTC), False)
    try:
        with storage.open(_name(chain_key, seq), "rb") as handle:
            document = json.load(io.TextIOWrapper(handle, encoding="utf-8"))
        fields = document["checkpoint"]
        payload = _payload(
            chain_key=fields["chain"],
            seq=fields["seq"],
            last_hash=fields["hash"],
            written_at=fields["at"],
        )
        expected = hmac.new(key, payload, hashlib.sha256).hexdigest()
        written_at = dt.datetime.strptime(fields["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return unreadable
    valid = (
        hmac.compare_digest(expected, str(document.get("mac", "")))
        and fields["chain"] == chain_key
        and fields["seq"] == seq
        and fields.get("v") == VERSION
    )
    return Checkpoint(chain_key, seq, str(fields["hash"]), written_at, valid)


@dataclass(frozen=True, slots=True)
class ChainCheckpoints:
    """What verification needs of a chain's checkpoints."""

    newest_valid: Checkpoint | None
    first_invalid: Checkpoint | None  # newer than newest_valid, or None


def chain_checkpoints(*, chain_key: str) -> ChainCheckpoints:
    """The newest checkpoint that verifies, and any newer one that does not.

    The newest valid checkpoint is enough: the chain's links pin every event before it.
    """
    return _checkpoints(checkpoint_storage(), chain_key, _mac_key())


def _checkpoints(storage: Storage, chain_key: str, key: bytes) -> ChainCheckpoints:
    first_invalid = None
    for seq in reversed(_seqs(storage, chain_key)):
        checkpoint = _read(storage, chain_key, seq, key)
        if checkpoint.valid:
            return ChainCheckpoints(checkpoint, first_invalid)
        first_invalid = first_invalid or checkpoint
    return ChainCheckpoints(None, first_invalid)


def checkpointed_chain_keys() -> list[str]:
    """Every chain with at least one checkpoint (a chain removed since still has them)."""
    try:
        directories, _ = checkpoint_storage().listdir("")
    except FileNotFoundError:
        return []
    return sorted(directories)
