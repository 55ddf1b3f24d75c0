"""Benchmark: ingest a synthetic 300-slice 512x512 CT series through the ingest service.

Reports instances per second and peak memory (RSS growth and Python allocations).
Run with `make bench` (not part of `make test`). Uses a throwaway data directory and,
unless DATABASE_URL is set, a throwaway SQLite database.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["PORTAL_DATA_DIR"] = str(work)
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
    os.environ["PORTAL_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from audit.actors import Actor
    from imaging.ingest import IngestOutcome, ingest_bytes
    from tenants.services import tenant_create
    from tests.imaging_tests.helpers import synthetic_ct

    slices = int(os.environ.get("BENCH_SLICES", "300"))
    files = synthetic_ct(slices=slices, size=512, patient_name="Bench^Series")
    tenant = tenant_create(slug="bench", name="Bench", actor=Actor.system("bench"))
    actor = Actor.system("bench")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    outcomes = [ingest_bytes(tenant=tenant, actor=actor, data=d, name="s").outcome for d in files]
    elapsed = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert outcomes.count(IngestOutcome.STORED) == slices, outcomes
    megabytes = sum(map(len, files)) / 1e6
    result = {
        "slices": slices,
        "megabytes": round(megabytes, 1),
        "seconds": round(elapsed, 2),
        "instances_per_second": round(slices / elapsed, 1),
        "megabytes_per_second": round(megabytes / elapsed, 1),
        "peak_python_allocations_mb": round(traced_peak / 1e6, 1),
        "peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "database": django.db.connection.vendor,
    }
    out = ROOT / "bench" / "ingest_results.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
