"""The web and task processes keep freed memory instead of faulting it in again per object.

Each case runs in a fresh interpreter: allocator settings are per process, and the
pattern only shows on a heap that has not been tuned already.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portal.allocator import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]

# Reads stored objects as WADO-RS does (decrypt, check the hash, hand the chunks on)
# and reports the page faults per object once the heap has warmed up.
READ_OBJECTS = """
import hashlib, json, os, resource, sys, tempfile, uuid
{setup}
from imaging import crypto
key, context = os.urandom(32), crypto.ObjectContext(uuid.uuid4(), "object")
objects = []
folder = tempfile.mkdtemp()
for index in range(20):
    data = os.urandom(525_000)  # a 512 x 512 CT slice
    path = os.path.join(folder, str(index))
    with open(path, "wb") as handle:
        handle.write(crypto.encrypt_bytes(data, key=key, context=context))
    objects.append((path, hashlib.sha256(data).hexdigest()))

def read_all():
    for path, sha256 in objects:
        with open(path, "rb") as handle:
            for chunk in crypto.decrypt_verified(
                handle.read, key=key, context=context, sha256=sha256
            ):
                pass

read_all()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    read_all()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"faults_per_object": faults / (10 * len(objects))}}))
"""

UNTUNED = ""
TUNED = "from portal.allocator import keep_freed_memory; keep_freed_memory()"

# Which entry points tune the allocator as they start: the web application, and a
# Celery worker before it starts its pool.
ENTRY_POINTS = """
import json
import portal.allocator
calls = []
portal.allocator.keep_freed_memory = lambda: calls.append("{name}")
{start}
print(json.dumps({{"calls": calls}}))
"""

# Allocates and frees 160 MB in 1 MB blocks, and reports how much stays resident.
HOLD_AND_FREE = """
import json
from portal.allocator import keep_freed_memory
keep_freed_memory()

def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096

baseline = resident()
blocks = [bytearray(1024 * 1024) for _ in range(160)]
peak = resident()
del blocks
print(json.dumps({"held": peak - baseline, "kept": resident() - baseline}))
"""


def _run(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environment(), "DJANGO_SETTINGS_MODULE": "portal.settings"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("GLIBC_TUNABLES", None)
    return environment


def _is_glibc() -> bool:
    return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


pytestmark = pytest.mark.skipif(not _is_glibc(), reason="the thresholds are glibc's")


def test_reading_objects_reuses_freed_memory_once_tuned():
    untuned = _run(READ_OBJECTS.format(setup=UNTUNED))["faults_per_object"]
    tuned = _run(READ_OBJECTS.format(setup=TUNED))["faults_per_object"]

    assert tuned < 2, f"{tuned} page faults per object (untuned: {untuned})"


@pytest.mark.parametrize(
    "start",
    [
        "import portal.wsgi",
        "import django; django.setup()\n"
        "from celery.signals import worker_init\n"
        "worker_init.send(sender=None)",
    ],
    ids=["web", "task"],
)
def test_server_processes_tune_the_allocator_as_they_start(start):
    assert _run(ENTRY_POINTS.format(name="tuned", start=start))["calls"] == ["tuned"]


def test_large_frees_still_go_back_to_the_kernel():
    figures = _run(HOLD_AND_FREE)

    assert figures["held"] > 150 * 1024 * 1024
    assert figures["kept"] < 40 * 1024 * 1024


def test_an_operators_own_malloc_tuning_is_left_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")

    assert keep_freed_memory() is False
