"""Verification of the audit chains: recompute every hash, check every link."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Subquery

from audit.checkpoints import chain_checkpoints, checkpointed_chain_keys
from audit.models import PLATFORM_CHAIN_KEY, AuditChain, AuditEvent
from audit.recorder import hash_of
from tenants.models import Tenant

CHAIN_MISSING = "chain missing"


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain_key: str
    tenant_slug: str | None
    tenant_id: object | None
    events: int
    broken_seq: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_seq is None


def chain_verify(*, chain: AuditChain) -> ChainReport:
    """Walk one chain in seq order; report the first seq that does not check out.

    The chain must also still reach its newest checkpoint (kept outside the database)
    and hold there the event the checkpoint saw; a checkpoint that does not verify
    is reported too.
    """
    slug = chain.tenant.slug if chain.tenant_id else None
    tid = chain.tenant_id
    checkpoints = chain_checkpoints(chain_key=chain.key)
    pinned = checkpoints.newest_valid
    # The head is read after the checkpoints (which it has passed) and just before the
    # walk, and the walk stops at it: a live clinic keeps appending while this runs,
    # and an event appended since is not "missing at the end". It is checked next time.
    chain.refresh_from_db(fields=["last_seq", "last_hash"])
    expected_seq = 1
    prev_hash = ""
    events = (
        AuditEvent.objects.unscoped(reason="audit verification walks whole chains")
        .filter(chain=chain, seq__lte=chain.last_seq)
        .order_by("seq")
        .iterator(chunk_size=2000)
    )
    count = 0
    for event in events:
        count += 1
        if event.seq != expected_seq:
            return ChainReport(chain.key, slug, tid, count, expected_seq, "event missing")
        if event.prev_hash != prev_hash:
            return ChainReport(
                chain.key, slug, tid, count, event.seq, "link to previous event broken"
            )
        if hash_of(event, chain_key=chain.key) != event.hash:
            return ChainReport(chain.key, slug, tid, count, event.seq, "event content altered")
        if pinned is not None and event.seq == pinned.seq and event.hash != pinned.hash:
            reason = f"event differs from the checkpoint of {pinned.when}"
            return ChainReport(chain.key, slug, tid, count, event.seq, reason)
        prev_hash = event.hash
        expected_seq += 1
    if pinned is not None and expected_seq <= pinned.seq:
        reason = (
            f"events missing at the end: the checkpoint of {pinned.when} "
            f"saw the chain reach seq {pinned.seq}"
        )
        return ChainReport(chain.key, slug, tid, count, expected_seq, reason)
    if chain.last_seq != expected_seq - 1 or chain.last_hash != prev_hash:
        return ChainReport(chain.key, slug, tid, count, expected_seq, "events missing at the end")
    if (beyond := _beyond_head(chain)) is not None:
        reason = "an event lies beyond the chain's head (written around the chain)"
        return ChainReport(chain.key, slug, tid, count, beyond, reason)
    if (forged := checkpoints.first_invalid) is not None:
        reason = "a checkpoint of this chain does not verify (altered or forged)"
        return ChainReport(chain.key, slug, tid, count, forged.seq, reason)
    return ChainReport(chain.key, slug, tid, count)


def _beyond_head(chain: AuditChain) -> int | None:
    """The first seq of the chain's events past its head, read against the head in the
    same statement: an event appended meanwhile commits with the head it moved, so it
    is never taken for one written around the chain."""
    head = AuditChain.objects.filter(pk=chain.pk).values("last_seq")
    return (
        AuditEvent.objects.unscoped(reason="audit verification walks whole chains")
        .filter(chain=chain, seq__gt=Subquery(head))
        .order_by("seq")
        .values_list("seq", flat=True)
        .first()
    )


def chains_verify(*, tenant_slug: str | None = None) -> list[ChainReport]:
    chains = AuditChain.objects.select_related("tenant").order_by("id")
    tenants = Tenant.objects.order_by("slug")
    if tenant_slug is not None:
        chains = chains.filter(tenant__slug=tenant_slug)
        tenants = tenants.filter(slug=tenant_slug)
    reports = [chain_verify(chain=chain) for chain in chains]
    # Every clinic's chain starts when it is created: a missing one was removed.
    chained = {report.tenant_id for report in reports}
    reports += [
        ChainReport(str(tenant.pk), tenant.slug, tenant.pk, 0, 1, CHAIN_MISSING)
        for tenant in tenants
        if tenant.pk not in chained
    ]
    if tenant_slug is None:
        # A checkpointed chain whose row is gone altogether (the platform's, or a
        # clinic's removed with its clinic row) was removed too.
        known = {report.chain_key for report in reports}
        reports += [
            ChainReport(key, None, None, 0, 1, "chain missing (it has checkpoints)")
            for key in checkpointed_chain_keys()
            if key not in known
        ]
        if PLATFORM_CHAIN_KEY not in {r.chain_key for r in reports}:
            # Migrations create it: without it, failed sign-ins and operators' actions
            # (the platform's own events) could be removed with their chain unnoticed.
            reports.append(ChainReport(PLATFORM_CHAIN_KEY, None, None, 0, 1, CHAIN_MISSING))
    return reports
