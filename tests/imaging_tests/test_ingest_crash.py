"""An ingest killed between writing its object and committing its row leaves no instance.

A separate process ingests one file and is killed (SIGKILL: no clean-up runs) once its
encrypted object is on disk and its row is written but not committed. Afterwards the
database holds nothing of it, the orphan sweep removes the object, and the same file
ingests again as new.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings
from django.utils import timezone

from audit.models import AuditChain
from audit.verify import chain_verify
from imaging.ingest import IngestOutcome
from imaging.models import Instance, Series, Study
from imaging.services import orphan_sweep
from imaging.storage import object_keys, storage_for
from tests.helpers import require_postgresql
from tests.imaging_tests.helpers import ingest, synthetic_ct
from tests.imaging_tests.test_worker_crash import ROOT, _database_url, _wait

# Runs in the child: the ingest pauses where a crash hurts most, and says so.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    import django

    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    django.setup()
    from audit import recorder
    from audit.actors import Actor
    from audit.models import Action
    from imaging.ingest import ingest_bytes
    from tenants.models import Tenant

    real = recorder.record_many

    def paused(**kwargs):
        if any(e.action == Action.INSTANCE_STORED for e in kwargs["entries"]):
            open(sys.argv[2], "w").close()  # object written, row inserted, not committed
            time.sleep(600)
        return real(**kwargs)

    recorder.record_many = paused
    with open(sys.argv[1], "rb") as handle:
        data = handle.read()
    ingest_bytes(
        tenant=Tenant.objects.get(slug="north"),
        actor=Actor.system("crash-test"),
        data=data,
        name="crash.dcm",
    )
    """
)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_an_ingest_killed_before_its_commit_leaves_no_instance(clinic, data_dir, tmp_path):
    require_postgresql()
    (data,) = synthetic_ct(slices=1, size=32)
    (tmp_path / "crash.dcm").write_bytes(data)
    (tmp_path / "child.py").write_text(CHILD)
    marker = tmp_path / "paused"
    env = {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
        "PORTAL_DATA_DIR": str(data_dir),
        "STORAGE_ROOT": str(settings.PORTAL_STORAGE_ROOT),
        "PORTAL_MASTER_KEY": settings.PORTAL_MASTER_KEY,
    }
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "crash.dcm"), str(marker)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        paused = _wait(lambda: marker.exists() or child.poll() is not None, 60)
        assert paused and marker.exists(), child.communicate(timeout=10)[0].decode()[-3000:]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    time.sleep(0.5)  # the server notices the closed connection and rolls back

    storage = storage_for(clinic)
    assert len(object_keys(storage, str(clinic.pk))) == 1  # the object did reach the disk
    assert Instance.objects.for_tenant(clinic).count() == 0
    assert (
        Series.objects.for_tenant(clinic).count() == Study.objects.for_tenant(clinic).count() == 0
    )
    assert chain_verify(chain=AuditChain.objects.get(tenant=clinic)).intact

    removed = orphan_sweep(tenant=clinic, older_than=timezone.now() + dt.timedelta(minutes=1))

    assert removed == 1
    assert object_keys(storage, str(clinic.pk)) == []
    assert ingest(clinic, data).outcome == IngestOutcome.STORED  # nothing half-stored in the way
