"""A worker killed in the middle of a thumbnail: after a restart the thumbnail exists once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from imaging.models import Instance, Series
from imaging.tasks import series_thumbnail
from portal.celery import app
from tests.helpers import celery_broker, require_postgresql, require_service, tcp_reachable
from tests.imaging_tests.helpers import ingest, synthetic_ct

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")


def _database_url() -> str:
    db = connection.settings_dict
    return (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    return subprocess.Popen(
        [
            str(CELERY),
            "-A",
            "portal",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"crash-{time.time_ns()}@localhost",
        ],
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_killed_worker_leaves_exactly_one_thumbnail(clinic, data_dir, tmp_path):
    require_postgresql()
    require_service(
        "Redis",
        bool(settings.REDIS_URL) and tcp_reachable(settings.REDIS_URL, 6379),
        "set REDIS_URL to run a real worker",
    )
    app.conf.task_always_eager = False
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    env = {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "PORTAL_DATA_DIR": str(data_dir),
        "STORAGE_ROOT": str(settings.PORTAL_STORAGE_ROOT),
        "PORTAL_MASTER_KEY": settings.PORTAL_MASTER_KEY,
    }
    log = tmp_path / "worker.log"
    with celery_broker("memory://"):  # the ingest's own enqueue goes nowhere
        for data in synthetic_ct(slices=3):
            ingest(clinic, data)
    series = Series.objects.for_tenant(clinic).get()
    task_id = series_thumbnail.delay(tenant_id=str(clinic.pk), series_id=str(series.pk)).id

    first = _worker({**env, "PORTAL_FAULT_THUMBNAIL_DELAY_SECONDS": "30"}, log)
    try:
        assert _wait(lambda: b"fault-injection pause" in log.read_bytes(), 60), log.read_text()
        os.killpg(first.pid, signal.SIGKILL)  # mid-task: rendered, not yet stored
        first.wait(timeout=10)
        series.refresh_from_db()
        assert series.thumbnail_status == Series.ThumbnailStatus.PENDING

        # kombu restores unacknowledged messages older than the visibility timeout when a
        # worker starts (and then only every ~100 s); give the restarted worker a short one.
        time.sleep(2)
        second = _worker({**env, "CELERY_VISIBILITY_TIMEOUT": "1"}, log)
        try:
            assert _wait(
                lambda: Series.objects.for_tenant(clinic).get().thumbnail_status == "ready", 90
            ), log.read_text()[-3000:]
            # The same message, redelivered after the worker died, did the work.
            assert log.read_text().count(f"series_thumbnail[{task_id}] received") == 2
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        app.conf.task_always_eager = True
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    series.refresh_from_db()
    objects = [p for p in (data_dir / "objects").rglob("*") if p.is_file()]
    instance_keys = set(Instance.objects.for_tenant(clinic).values_list("storage_key", flat=True))
    thumbnails = [
        p for p in objects if str(p.relative_to(data_dir / "objects")) not in instance_keys
    ]
    assert [str(p.relative_to(data_dir / "objects")) for p in thumbnails] == [series.thumbnail_key]
