"""Profile the DICOMweb requests that `orthanc_compare.py` times, in process.

The comparison says how fast; this says where the time goes. It runs Django's request
handling in this process (no gunicorn, no network) on PostgreSQL, so the figures are the
server's own cost per request, and writes for each request type:

- the mean time and the number of SQL queries per request;
- a pyinstrument profile (text) in `bench/profiles/<name>.txt`.

Run `python bench/profile_requests.py` (needs the `bench` extra and a running PostgreSQL;
DATABASE_URL defaults to postgres://portal:portal@127.0.0.1:5432/portal_profile, which
is recreated; tasks queue in Redis, REDIS_URL default db 8, and are not run).
BENCH_SLICES (default 300) and BENCH_STUDIES (default 500) size the data.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROFILES = ROOT / "bench" / "profiles"


def _setup_environment(work: Path) -> None:
    database_url = os.environ.get(
        "DATABASE_URL", "postgres://portal:portal@127.0.0.1:5432/portal_profile"
    )
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PORTAL_DATA_DIR": str(work),
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "0",
            "LOG_LEVEL": "WARNING",
            "API_RATE_LIMIT_PER_MINUTE": "0",
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
        }
    )
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
    # Set PORTAL_MASTER_KEY to reuse the profiled database afterwards.
    os.environ.setdefault("PORTAL_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    from orthanc_compare import ensure_postgres_and_redis

    ensure_postgres_and_redis(database_url, os.environ["REDIS_URL"])


def _multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "bench-boundary-0123456789"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
        for f in files
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="portal-profile-"))
    _setup_environment(work)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from orthanc_compare import BULK_PATIENT_ID, small_studies
    from pyinstrument import Profiler
    from viewer_bench import synthetic_ct_files

    call_command("migrate", verbosity=0)
    call_command("create_tenant", "bench", "--name", "Bench", stdout=io.StringIO())
    out = io.StringIO()
    call_command(
        *("create_api_token", "--tenant", "bench", "--name", "bench"),
        *("--scopes", "dicomweb:read,dicomweb:write"),
        stdout=out,
    )
    token = out.getvalue().strip().splitlines()[-1].strip()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    slices = int(os.environ.get("BENCH_SLICES", "300"))
    studies = int(os.environ.get("BENCH_STUDIES", "500"))
    synthetic_ct_files(work / "ct", slices=slices)
    ct_files = [p.read_bytes() for p in sorted((work / "ct").glob("*.dcm"))]
    small = small_studies(studies)
    PROFILES.mkdir(exist_ok=True)

    import pydicom

    first = pydicom.dcmread(io.BytesIO(ct_files[0]), stop_before_pixels=True)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    sops = [
        pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID for f in ct_files
    ]
    series_url = f"/dicomweb/studies/{study}/series/{series}"
    batches = [_multipart(ct_files[i : i + 10]) for i in range(0, len(ct_files), 10)]
    small_batches = [_multipart(small[i : i + 10]) for i in range(0, len(small), 10)]
    frames = iter(sops * 3)
    wanted = iter([f"BENCH-{i:06d}" for i in range(100, len(small))] * 3)

    def stow(batch: tuple[bytes, str]) -> None:
        response = client.post("/dicomweb/studies", data=batch[0], content_type=batch[1])
        assert response.status_code == 200, response.content[:300]

    def get(url: str, accept: str = "application/dicom+json", **params: str) -> None:
        response = client.get(url, params, HTTP_ACCEPT=accept)
        assert response.status_code in (200, 204), (url, response.status_code)
        b"".join(response) if response.streaming else response.content

    ct_batches, small_iter = iter(batches), iter(small_batches)
    wado_accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'

    def rendered_frame() -> None:
        get(f"{series_url}/instances/{next(frames)}/frames/1/rendered", "image/jpeg")

    plan: list[tuple[str, int, Callable[[], None]]] = [
        ("stow_ct_10_per_request", len(batches), lambda: stow(next(ct_batches))),
        ("stow_small_10_per_request", len(small_batches), lambda: stow(next(small_iter))),
        ("qido_exact", 50, lambda: get("/dicomweb/studies", PatientID=next(wanted))),
        (
            "qido_100hits",
            20,
            lambda: get("/dicomweb/studies", PatientID=BULK_PATIENT_ID, limit="100"),
        ),
        ("wado_series", 3, lambda: get(series_url, wado_accept)),
        ("rendered_frame", 30, rendered_frame),
        ("series_metadata", 10, lambda: get(f"{series_url}/metadata")),
    ]
    summary = []
    for name, runs, call in plan:
        if name == "qido_exact":
            # After the stores, as autovacuum would: plans made on empty-table statistics
            # (a nested loop over every patient) would profile the planner, not the portal.
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        profiler = Profiler(interval=0.0005)
        queries: list[int] = []

        def count(execute, *args, queries=queries):
            queries.append(1)
            return execute(*args)

        with connection.execute_wrapper(count):
            profiler.start()
            started = time.perf_counter()
            for _ in range(runs):
                call()
            elapsed = time.perf_counter() - started
            profiler.stop()
        (PROFILES / f"{name}.txt").write_text(
            profiler.output_text(unicode=True, color=False, show_all=False)
        )
        line = (
            f"{name:28s} {elapsed / runs * 1000:8.2f} ms/request "
            f"{len(queries) / runs:6.1f} queries/request"
        )
        summary.append(line)
        print(line, flush=True)
    (PROFILES / "summary.txt").write_text("\n".join(summary) + "\n")


if __name__ == "__main__":
    main()
