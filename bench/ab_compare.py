"""A/B: the portal as checked out against an earlier revision, same data, same requests.

The same VM that makes `orthanc_compare.py` drift by 20-30 % over minutes makes a
change of a few percent invisible between two runs of it. This serves the working tree
(A) and a git revision (B) side by side, on one database and one object store, and
times the read requests alternating between them, round after round, so that drift
falls on both alike. It prints each figure's median for A and B and A / B.

    python bench/ab_compare.py [REV]      # REV defaults to HEAD

Both must share the database schema: run it only across changes without migrations.
Needs the `bench` extra, PostgreSQL (database `portal_ab`, recreated) and Redis (db 6).
BENCH_SLICES (default 300) and BENCH_STUDIES (default 500) size the data; BENCH_ROUNDS
(default 10) sets the rounds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orthanc_compare import (
    Reader,
    bench_clinic,
    client_for,
    ensure_postgres_and_redis,
    portal_env,
    small_studies,
    stow,
)
from viewer_bench import ROOT, free_port, manage, start_server, stop_server, synthetic_ct_files

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    database_url = "postgres://portal:portal@127.0.0.1:5432/portal_ab"
    redis_url = "redis://127.0.0.1:6379/6"
    ensure_postgres_and_redis(database_url, redis_url)
    work = Path(tempfile.mkdtemp(prefix="portal-ab-"))
    checkout = work / "b"
    subprocess.run(  # noqa: S603 - fixed argv
        ["git", "worktree", "add", "--detach", str(checkout), revision],  # noqa: S607
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    env = portal_env(work, database_url, redis_url)
    servers = []
    try:
        token = bench_clinic(env)
        urls = {}
        for name, cwd in (("A (working tree)", ROOT), (f"B ({revision})", checkout)):
            port = free_port()
            server, _ = start_server(env, port, work / f"{name[0]}.log", cwd=cwd)
            servers.append(server)
            urls[name] = f"http://127.0.0.1:{port}/dicomweb"
        slices = int(os.environ.get("BENCH_SLICES", "300"))
        synthetic_ct_files(work / "ct", slices=slices)
        ct_files = [p.read_bytes() for p in sorted((work / "ct").glob("*.dcm"))]
        small = small_studies(int(os.environ.get("BENCH_STUDIES", "500")))
        print(f"storing {slices} CT slices and {len(small)} small studies through A")
        stow(client_for(next(iter(urls.values())), token), ct_files + small)
        # As autovacuum would after a load: plans made on empty-table statistics would
        # time the planner's guess, not the code.
        manage(
            env,
            "shell",
            "-c",
            "from django.db import connection as c; c.cursor().execute('ANALYZE')",
        )
        readers = {name: Reader(url, token, ct_files, small) for name, url in urls.items()}
        names = list(readers)
        for index in range(ROUNDS):
            for name in names if index % 2 == 0 else names[::-1]:
                readers[name].round()
            print(f"round {index + 1} of {ROUNDS} done", flush=True)
        a, b = (readers[n].samples for n in names)
        print(f"\n{'figure':18s} {'A':>10s} {'B':>10s} {'A / B':>7s}  (medians, {ROUNDS} rounds)")
        for key in a:
            median_a, median_b = statistics.median(a[key]), statistics.median(b[key])
            print(f"{key:18s} {median_a:10.2f} {median_b:10.2f} {median_a / median_b:7.3f}")
    finally:
        for server in servers:
            stop_server(server)
        subprocess.run(  # noqa: S603 - fixed argv
            ["git", "worktree", "remove", "--force", str(checkout)],  # noqa: S607
            cwd=ROOT,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
