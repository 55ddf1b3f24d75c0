"""What the audit log's study filter costs at scale, and what its index costs each event.

A privacy officer's `?study=` filter and a study page's history find every event that
names the study, in its target or anywhere in its detail (`detail__mentions`). This
fills a clinic's log on PostgreSQL with synthetic events (one in ten a search naming a
hundred studies, the rest naming one), then times, without the detail's GIN index and
with it in three settings (PostgreSQL's 4 MB pending list, the 1 MB one that migration
audit/0004 sets, and no pending list):

- the history of a study named once, and of one named in 1,500 searches
  (`events_about_study(...)[:50]`, as the study page and the audit log read it), p50;
- appending events through `audit.record`, one per transaction as requests do (a search
  naming 100 studies, 2,000 times; an event naming one, 500 times): p50, mean and max.

Run `python bench/audit_study_filter.py` (a running PostgreSQL; DATABASE_URL defaults
to postgres://portal:portal@127.0.0.1:5432/portal_auditbench, which is recreated).
BENCH_AUDIT_EVENTS (default 300000) sizes the log. Writes bench/audit_results.json.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

INDEX = "audit_event_detail_gin"


def _setup() -> None:
    database_url = os.environ.get(
        "DATABASE_URL", "postgres://portal:portal@127.0.0.1:5432/portal_auditbench"
    )
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PORTAL_DATA_DIR": tempfile.mkdtemp(prefix="portal-auditbench-"),
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
    os.environ.setdefault("PORTAL_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    from orthanc_compare import ensure_postgres_and_redis

    ensure_postgres_and_redis(database_url, os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"))


def _fill(
    cursor, *, tenant_id: str, chain_id: int, base: int, events: int, common: str, rare: str
) -> None:
    """Synthetic rows straight in SQL (the chain's hashes are not what is measured)."""
    cursor.execute(
        """
        INSERT INTO audit_auditevent (chain_id, seq, tenant_id, created_at, actor_type,
            actor_id, action, target_type, target_id, outcome, detail, prev_hash, hash)
        SELECT %(chain)s, %(base)s + i, %(tenant)s, now() - (%(events)s - i) * interval '1 second',
            'api_token', 'bench', CASE WHEN i %% 10 = 0 THEN 'dicomweb.search'
            ELSE 'dicomweb.retrieve' END, '', '', 'success',
            CASE WHEN i %% 10 = 0 THEN jsonb_build_object(
                'studies', (SELECT jsonb_agg(CASE WHEN j = 1 AND i %% 200 = 0 THEN %(common)s
                    ELSE gen_random_uuid()::text END) FROM generate_series(1, 100) j
                    WHERE i > 0),
                'query', jsonb_build_object('keys', jsonb_build_array('PatientID')),
                'count', 100)
            ELSE jsonb_build_object('study', CASE WHEN i = %(events)s / 2 THEN %(rare)s
                ELSE gen_random_uuid()::text END, 'instances', 1) END,
            '', md5(i::text)
        FROM generate_series(1, %(events)s) i
        """,
        {
            "chain": chain_id,
            "base": base,
            "tenant": tenant_id,
            "events": events,
            "common": common,
            "rare": rare,
        },
    )
    cursor.execute(
        "UPDATE audit_auditchain SET last_seq = %s WHERE id = %s", [base + events, chain_id]
    )


def _p50_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    _setup()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    import audit
    from audit.actors import Actor
    from audit.models import Action, AuditChain
    from audit.selectors import events_about_study
    from tenants.services import tenant_create

    call_command("migrate", verbosity=0)
    actor = Actor.system("bench")
    tenant = tenant_create(slug="bench", name="Bench", actor=actor)
    chain = AuditChain.objects.get(tenant=tenant)
    events = int(os.environ.get("BENCH_AUDIT_EVENTS", "300000"))
    common, rare = str(uuid.uuid4()), str(uuid.uuid4())
    print(f"filling {events} events ...", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS " + INDEX)
        _fill(
            cursor,
            tenant_id=str(tenant.pk),
            chain_id=chain.pk,
            base=chain.last_seq,
            events=events,
            common=common,
            rare=rare,
        )
        cursor.execute("VACUUM ANALYZE audit_auditevent")

    def history(study_id: str) -> Callable[[], object]:
        return lambda: list(
            events_about_study(tenant=tenant, study_id=study_id, series_ids=[])[:50]
        )

    def appends(detail: Callable[[], dict], count: int) -> dict[str, float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            with transaction.atomic():
                audit.record(
                    actor=actor,
                    action=Action.DICOMWEB_SEARCH,
                    target=None,
                    tenant=tenant,
                    detail=detail(),
                )
            times.append((time.perf_counter() - start) * 1000)
        return {
            "p50": round(statistics.median(times), 3),
            "mean": round(statistics.fmean(times), 3),
            "max": round(max(times), 1),
        }

    def search_detail() -> dict:
        return {"studies": [str(uuid.uuid4()) for _ in range(100)], "count": 100}

    def one_detail() -> dict:
        return {"study": str(uuid.uuid4()), "instances": 1}

    results: dict[str, dict] = {}
    # fastupdate on (PostgreSQL's default) queues new entries in a pending list that an
    # insert now and then merges into the index; off, each insert updates the index.
    setups = {
        "without_index": None,
        "index_fastupdate_on": "fastupdate = on",
        "index_fastupdate_on_1mb": "fastupdate = on, gin_pending_list_limit = 1024",
        "index_fastupdate_off": "fastupdate = off",
    }
    for label, options in setups.items():
        extra: dict[str, float] = {}
        if options is not None:
            print(f"building the index ({label}) ...", flush=True)
            with connection.cursor() as cursor:
                cursor.execute("DROP INDEX IF EXISTS " + INDEX)
                start = time.perf_counter()
                cursor.execute(
                    f"CREATE INDEX {INDEX} ON audit_auditevent USING gin (detail) WITH ({options})"
                )
                extra["build_s"] = round(time.perf_counter() - start, 1)
                cursor.execute("VACUUM ANALYZE audit_auditevent")
                cursor.execute("SELECT pg_relation_size(%s)", [INDEX])
                extra["index_mb"] = round(cursor.fetchone()[0] / 2**20, 1)
        rounds = 5 if options is None else 30
        results[label] = {
            "history_rare_ms_p50": _p50_ms(history(rare), rounds=rounds),
            "history_common_ms_p50": _p50_ms(history(common), rounds=rounds),
            "append_search_100_studies_ms": appends(search_detail, 2000),
            "append_one_study_ms": appends(one_detail, 500),
            **extra,
        }
        print(label, results[label], flush=True)
    out = {"events": events, "results": results}
    (ROOT / "bench" / "audit_results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
