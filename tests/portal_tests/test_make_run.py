"""`make run` on a fresh data directory: sets up, serves the sign-in page, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)
def test_make_run_serves_sign_in_and_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    data_dir = tmp_path / "var"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PORTAL_DATA_DIR": str(data_dir),
    }
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            status = _get(f"http://127.0.0.1:{port}/accounts/login/")
            if status == 200:
                break
            time.sleep(0.5)
        output = log.read_text()
        assert status == 200, output[-3000:]
        assert _get(f"http://127.0.0.1:{port}/readyz") == 200
        assert "Created master key file" in output
        assert "radiologist@demo-clinic.example" in output
        assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600
        assert (data_dir / "portal.sqlite3").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(timeout=30)
        finally:
            deadline = time.monotonic() + 30
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            stragglers = _group_alive(proc.pid)
            if stragglers:
                os.killpg(proc.pid, signal.SIGKILL)

    assert not stragglers, "Ctrl-C left processes running"
    assert _get(f"http://127.0.0.1:{port}/healthz") == 0
