"""A/B: the portal as checked out against an earlier revision, same data, same requests.

The same VM that makes `orthanc_compare.py` drift by 20-30 % over minutes makes a
change of a few percent invisible between two runs of it. This serves the working tree
(A) and a git revision (B) side by side and times the same requests alternating between
them, round after round, so that drift falls on both alike. It prints each figure's
median for A and B and A / B.

    python bench/ab_compare.py [REV]            # reads; REV defaults to HEAD
    python bench/ab_compare.py --stow [REV]     # STOW-RS

Reads: both servers share one database and object store, so only across changes
without migrations. STOW-RS: each server has its own database (migrated by its own code)
and object store, so any two revisions compare; each round stores a fresh copy of the CT
series (one client) and fresh small studies (four clients) into each, and the web
workers' CPU per stored instance is reported beside the rates.

Needs the `bench` extra, PostgreSQL (databases `portal_ab`, `portal_ab_a`, `portal_ab_b`,
recreated) and Redis (dbs 5 and 6). BENCH_SLICES (default 300) and BENCH_STUDIES
(default 500) size the data; BENCH_ROUNDS (default 10) sets the rounds.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orthanc_compare import (
    Reader,
    Side,
    bench_clinic,
    client_for,
    ensure_postgres_and_redis,
    portal_env,
    small_studies,
    stow,
    timed_stow,
)
from viewer_bench import ROOT, free_port, manage, start_server, stop_server, synthetic_ct_files

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
SLICES = int(os.environ.get("BENCH_SLICES", "300"))
STUDIES = int(os.environ.get("BENCH_STUDIES", "500"))


@contextmanager
def worktree(revision: str) -> Iterator[tuple[Path, Path]]:
    """(a scratch folder, a checkout of `revision` inside it); both removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="portal-ab-"))
    checkout = work / "b"
    subprocess.run(  # noqa: S603 - fixed argv
        ["git", "worktree", "add", "--detach", str(checkout), revision],  # noqa: S607
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield work, checkout
    finally:
        subprocess.run(  # noqa: S603 - fixed argv
            ["git", "worktree", "remove", "--force", str(checkout)],  # noqa: S607
            cwd=ROOT,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


def print_medians(samples: dict[str, dict[str, list[float]]], unit_note: str) -> None:
    a, b = samples.values()
    print(f"\n{'figure':22s} {'A':>10s} {'B':>10s} {'A / B':>7s}  ({unit_note}, {ROUNDS} rounds)")
    for key in a:
        median_a, median_b = statistics.median(a[key]), statistics.median(b[key])
        print(f"{key:22s} {median_a:10.2f} {median_b:10.2f} {median_a / median_b:7.3f}")


def compare_reads(revision: str) -> None:
    database_url = "postgres://portal:portal@127.0.0.1:5432/portal_ab"
    redis_url = "redis://127.0.0.1:6379/6"
    ensure_postgres_and_redis(database_url, redis_url)
    servers = []
    with worktree(revision) as (work, checkout):
        try:
            env = portal_env(work, database_url, redis_url)
            token = bench_clinic(env)
            urls = {}
            for name, cwd in (("A (working tree)", ROOT), (f"B ({revision})", checkout)):
                port = free_port()
                server, _ = start_server(env, port, work / f"{name[0]}.log", cwd=cwd)
                servers.append(server)
                urls[name] = f"http://127.0.0.1:{port}/dicomweb"
            synthetic_ct_files(work / "ct", slices=SLICES)
            ct_files = [p.read_bytes() for p in sorted((work / "ct").glob("*.dcm"))]
            small = small_studies(STUDIES)
            print(f"storing {SLICES} CT slices and {len(small)} small studies through A")
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
            print_medians({n: readers[n].samples for n in names}, "medians")
        finally:
            for server in servers:
                stop_server(server)


def fresh_copy(files: list[bytes]) -> list[bytes]:
    """The same instances as a new study: new study, series and instance UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    copies = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        copies.append(buffer.getvalue())
    return copies


def compare_stow(revision: str) -> None:
    servers = []
    with worktree(revision) as (work, checkout):
        try:
            sides = {}
            for name, cwd, db in (
                ("A (working tree)", ROOT, "a"),
                (f"B ({revision})", checkout, "b"),
            ):
                database_url = f"postgres://portal:portal@127.0.0.1:5432/portal_ab_{db}"
                redis_url = f"redis://127.0.0.1:6379/{5 if db == 'a' else 6}"
                ensure_postgres_and_redis(database_url, redis_url)
                env = portal_env(work / db, database_url, redis_url)
                token = bench_clinic(env, root=cwd)
                port = free_port()
                server, _ = start_server(env, port, work / f"{db}.log", cwd=cwd)
                servers.append(server)
                url = f"http://127.0.0.1:{port}/dicomweb"
                sides[name] = Side(name, url, token, {"web": ([server.pid], ())})
            synthetic_ct_files(work / "ct", slices=SLICES)
            ct_files = [p.read_bytes() for p in sorted((work / "ct").glob("*.dcm"))]
            for side in sides.values():  # warm both up: imports, prepared statements
                stow(client_for(side.url, side.token), fresh_copy(ct_files[:20]))
            samples: dict[str, dict[str, list[float]]] = {
                name: {
                    key: []
                    for key in (
                        "stow_1client",
                        "stow_1client_cpu_ms",
                        "stow_4clients",
                        "stow_4clients_cpu_ms",
                    )
                }
                for name in sides
            }
            names = list(sides)
            for index in range(ROUNDS):
                for name in names if index % 2 == 0 else names[::-1]:
                    ct, small = fresh_copy(ct_files), small_studies(STUDIES)
                    for key, files, clients in (
                        ("stow_1client", ct, 1),
                        ("stow_4clients", small, 4),
                    ):
                        rate, cpu = timed_stow(sides[name], files, clients)
                        samples[name][key].append(rate)
                        samples[name][f"{key}_cpu_ms"].append(cpu["web"])
                print(f"round {index + 1} of {ROUNDS} done", flush=True)
            print_medians(samples, "instances/s and web CPU ms per instance, medians")
        finally:
            for server in servers:
                stop_server(server)


def main() -> None:
    args = sys.argv[1:]
    writes = "--stow" in args
    args = [arg for arg in args if arg != "--stow"]
    revision = args[0] if args else "HEAD"
    if writes:
        compare_stow(revision)
    else:
        compare_reads(revision)


if __name__ == "__main__":
    main()
