"""Benchmark: peak extra memory of the portal during one large STOW-RS request.

Streams a multipart/related body (default 1 GB of synthetic CT instances) into the real
WSGI application through a generator-backed wsgi.input, so the body is never held in
memory by the benchmark itself. Reports peak RSS growth and Python allocations.
Run with `make bench`; BENCH_STOW_MB sets the request size.
"""

from __future__ import annotations

import base64
import io
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
BOUNDARY = "benchboundary"


class GeneratedBody(io.RawIOBase):
    def __init__(self, parts: list[bytes], total_bytes: int) -> None:
        self.parts, self.total, self.sent, self.index = parts, total_bytes, 0, 0
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self.pending:
            if self.sent >= self.total:
                if self.index >= 0:
                    self.pending, self.index = f"--{BOUNDARY}--\r\n".encode(), -1
                    break
                return 0
            part = self.parts[self.index % len(self.parts)]
            self.index += 1
            self.pending = (
                f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            )
            self.sent += len(self.pending)
        size = min(len(target), len(self.pending))
        target[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="portal-stow-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["PORTAL_DATA_DIR"] = str(work)
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["SECURE_SSL_REDIRECT"] = "0"
    os.environ["PORTAL_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"
    os.environ["API_RATE_LIMIT_PER_MINUTE"] = "0"
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from audit.actors import Actor
    from tenants.services import tenant_create
    from tenants.tokens import api_token_create
    from tests.imaging_tests.helpers import synthetic_ct

    megabytes = int(os.environ.get("BENCH_STOW_MB", "1024"))
    tenant = tenant_create(slug="bench", name="Bench", actor=Actor.system("bench"))
    _, token = api_token_create(
        tenant=tenant,
        name="bench",
        scopes=["dicomweb:write"],
        actor=Actor.system("bench"),
        now=timezone.now(),
    )
    # Distinct instances: a pool of series reused with fresh UIDs would be duplicates.
    instances = synthetic_ct(slices=int(megabytes * 1e6 / 525_000) + 1, size=512)
    body = GeneratedBody(instances, megabytes * 1_000_000)
    length = 0
    probe = GeneratedBody(instances, megabytes * 1_000_000)
    while chunk := probe.read(1 << 20):
        length += len(chunk)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/dicomweb/studies",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BufferedReader(body),
        "CONTENT_TYPE": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "CONTENT_LENGTH": str(length),
        "wsgi.errors": sys.stderr,
    }
    statuses: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    chunks = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    raw = b"".join(chunks)
    if not raw.startswith(b"{"):
        raise SystemExit(f"unexpected answer {statuses} {raw[:300]!r}")
    answer = json.loads(raw)
    elapsed = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "request_megabytes": megabytes,
        "status": statuses[0],
        "stored": len(answer.get("00081199", {}).get("Value", [])),
        "failed": len(answer.get("00081198", {}).get("Value", [])),
        "seconds": round(elapsed, 1),
        "peak_python_allocations_mb": round(traced_peak / 1e6, 1),
        "peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
    }
    (ROOT / "bench" / "stow_results.json").write_text(json.dumps(result, indent=2) + "\n")
    if "error" in answer:
        result["error"] = answer["error"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
