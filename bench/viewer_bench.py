"""Benchmark: the diagnostic viewer in a real browser against a real portal server.

Sets up a throwaway portal (fresh PORTAL_DATA_DIR, SQLite unless DATABASE_URL is set, DEBUG
off, no Redis: Celery messages go to the embedded filesystem broker and no worker runs, so
no thumbnails), ingests a synthetic 300-slice 512x512 CT with the `ingest` command, serves
the portal (gunicorn when installed, else `runserver --insecure`, which serves /static/
with DEBUG off), signs in with password and TOTP in Debian's headless Chromium (Playwright,
no browser download) and opens the viewer BENCH_VIEWER_RUNS times (default 3). Each run
opens the viewer twice, each time in a fresh browser context (empty HTTP cache and memory):

- "prefetched": waits until every slice is in the viewer's cache (prefetch complete),
  then steps through slices 2..N with `portalViewer.goTo(n)`;
- "cold": steps through slices 2..N right after the first image is drawn.

A slice counts as drawn when the viewer draws it to #viewer-canvas while it is the current
slice and decoded (the `is-pending` class on #viewport is off): an init script wraps
CanvasRenderingContext2D.drawImage to timestamp that call. Times from navigation start
come from Navigation/Resource Timing; `data-first-image-ms` and `data-all-loaded-ms` count
from the viewer script's start. Medians over the runs go to bench/viewer_results.json.

Run with `make bench` or `.venv/bin/python bench/viewer_bench.py` (not part of `make
test`). BENCH_VIEWER_RUNS, BENCH_VIEWER_SLICES (default 300), BENCH_GUNICORN (path of a
gunicorn executable, default .venv/bin/gunicorn) and BENCH_GUNICORN_WORKERS change the
set-up. With gunicorn, /static/ (which a reverse proxy serves in production) is answered
from `collectstatic` output by a Playwright route. With DATABASE_URL set, that database is
used and the clinic gets a fresh slug (bench-xxxxxx) so repeated runs do not collide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = sys.executable
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# The same flags as tests/browser.py (loopback HTTP, no network access from Chromium).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,HttpsFirstModeV2",
]
RESULTS = ROOT / "bench" / "viewer_results.json"
STEP_TIMEOUT_MS = 60_000
PREFETCH_TIMEOUT_MS = 600_000

# Runs in every page before its own scripts: timestamps each draw to the viewer's canvas,
# with the slice on screen and whether that slice was decoded (not a placeholder).
INIT_SCRIPT = """
(() => {
  performance.setResourceTimingBufferSize(5000);
  const draws = [];
  window.__bench = { draws, waiter: null };
  const original = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const result = original.apply(this, args);
    if (this.canvas && this.canvas.id === "viewer-canvas") {
      const viewer = document.getElementById("viewer");
      const viewport = document.getElementById("viewport");
      const record = {
        t: performance.now(),
        slice: viewer ? Number(viewer.dataset.slice || 0) : 0,
        current: !!viewport && !viewport.classList.contains("is-pending"),
      };
      draws.push(record);
      const waiter = window.__bench.waiter;
      if (waiter && record.current && record.slice === waiter.slice) {
        window.__bench.waiter = null;
        waiter.resolve(record);
      }
    }
    return result;
  };
})();
"""

# Page-load numbers, all in ms from navigation start.
LOAD_TIMINGS_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const viewer = document.getElementById("viewer");
  const first = window.__bench.draws.find((d) => d.current && d.slice === 1);
  const firstMs = Number(viewer.dataset.firstImageMs);
  const resources = performance.getEntriesByType("resource");
  const meta = resources.find((r) => r.name.includes("/metadata"));
  const frame = resources.find((r) => r.name.includes("/frames/"));
  const script = resources.find((r) => r.name.includes("/static/js/viewer.js"));
  const span = (r) => r && { start: r.startTime, ttfb: r.responseStart - r.requestStart,
    end: r.responseEnd, bytes: r.encodedBodySize };
  return {
    html_ttfb: nav.responseStart - nav.requestStart,
    html_end: nav.responseEnd,
    dom_content_loaded: nav.domContentLoadedEventEnd,
    viewer_js: span(script),
    script_start: first ? first.t - firstMs : null,
    metadata: span(meta),
    first_frame: span(frame),
    first_image: first ? first.t : null,
    data_first_image_ms: firstMs,
  };
}
"""

# Steps through slices 2..N with goTo(n), waiting each time until slice n is drawn.
SCROLL_JS = """
async ({ timeoutMs }) => {
  const api = window.portalViewer;
  const viewport = document.getElementById("viewport");
  const n = api.state().slices;
  const steps = [];
  const start = performance.now();
  for (let slice = 2; slice <= n; slice++) {
    const t0 = performance.now();
    let timer = 0;
    const drawn = new Promise((resolve, reject) => {
      window.__bench.waiter = { slice, resolve };
      timer = setTimeout(() => reject(new Error("slice " + slice + " not drawn")), timeoutMs);
    });
    api.goTo(slice);
    const cached = !viewport.classList.contains("is-pending");
    const record = await drawn;
    clearTimeout(timer);
    steps.push({ slice, ms: record.t - t0, network: !cached });
  }
  return { slices: n, total: performance.now() - start, steps, loaded: api.state().loaded };
}
"""

# Request timing of every frame request the page made.
FRAME_REQUESTS_JS = """
() => performance.getEntriesByType("resource").filter((r) => r.name.includes("/frames/"))
  .map((r) => ({ start: r.startTime, ttfb: r.responseStart - r.requestStart,
    end: r.responseEnd }))
"""

FRAME_INTERVAL_JS = """
() => new Promise((resolve) => {
  const times = [];
  const tick = (t) => { times.push(t); if (times.length < 61) requestAnimationFrame(tick);
    else resolve((times[60] - times[0]) / 60); };
  requestAnimationFrame(tick);
})
"""


# --- Helpers ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def totp_now(uri: str) -> str:
    """RFC 6238 code for an otpauth:// URI (SHA-1, as django-otp's TOTP devices use)."""
    params = {k: v[0] for k, v in parse_qs(urlparse(uri).query).items()}
    secret = params["secret"].upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digits, period = int(params.get("digits", 6)), int(params.get("period", 30))
    digest = hmac.new(key, struct.pack(">Q", int(time.time()) // period), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return f"{code:0{digits}d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str, stdin: str | None = None, root: Path = ROOT) -> str:
    """Run `manage.py` of the code under `root` (this checkout unless told)."""
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [PYTHON, str(root / "manage.py"), *args],
        env=env,
        cwd=root,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def synthetic_ct_files(folder: Path, *, slices: int, size: int = 512) -> int:
    """A body-like CT phantom (int16, HU = stored - 1024) in `folder`; returns bytes written.

    An elliptical trunk of soft tissue with a fat rim, a spine, an aorta and organs whose
    size changes along z, lungs in the upper half, air outside, and CT-like noise.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(20260101)
    spacing, thickness = 0.7, 1.25
    axis = (np.arange(size) - size / 2 + 0.5) * spacing
    y, x = np.meshgrid(axis, axis, indexing="ij")  # mm from the centre

    def disc(cx: float, cy: float, r: float) -> np.ndarray:
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r

    def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0

    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(slices):
        f = index / max(1, slices - 1)  # 0 at the feet, 1 at the head end
        bulge = np.sin(np.pi * f)
        a, b = 150 + 25 * bulge, 105 + 15 * bulge
        hu = np.full((size, size), -1000.0)
        hu[ellipse(0, 0, a, b)] = -100.0  # subcutaneous fat
        hu[ellipse(0, 0, a - 14, b - 12)] = 40.0  # soft tissue
        if f > 0.5:  # lungs, growing towards the head end
            r = 30 + 60 * min(1.0, (f - 0.5) * 3)
            hu[ellipse(-a * 0.45, -10, r * 0.55, r * 0.8)] = -850.0
            hu[ellipse(a * 0.45, -10, r * 0.55, r * 0.8)] = -850.0
        else:  # liver and kidneys below
            hu[ellipse(-45, 0, 55 * (1 - f), 45 * (1 - f) + 5)] = 60.0
            hu[disc(-55, 55, 18 * bulge + 4)] = 30.0
            hu[disc(55, 55, 18 * bulge + 4)] = 30.0
        hu[disc(15, 40, 11 + 2 * np.cos(6 * np.pi * f))] = 180.0  # contrast-filled aorta
        hu[disc(0, 80, 17)] = 700.0  # vertebral body
        hu[disc(0, 80, 12)] = 250.0  # its cancellous core
        hu += rng.normal(0.0, 12.0, hu.shape)
        pixels = np.clip(np.rint(hu + 1024), -1024, 3071).astype("<i2")
        z = -200.0 + index * thickness

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Bench^Viewer", "BENCH-1", "19700101"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "BENCH-ACC-1"
        ds.StudyDescription, ds.SeriesDescription = "Bench CT", "Axial 1.25 mm"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, index + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], thickness
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, z]
        ds.SliceLocation = z
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / f"ct{index + 1:04d}.dcm").write_bytes(buffer.getvalue())
        total += buffer.tell()
    return total


# --- Server -------------------------------------------------------------------------------


def start_server(
    env: dict[str, str], port: int, log: Path, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """The portal's code under `cwd` (this checkout unless told), served on `port`."""
    gunicorn = Path(os.environ.get("BENCH_GUNICORN", VENV_BIN / "gunicorn"))
    if gunicorn.exists():
        workers = os.environ.get("BENCH_GUNICORN_WORKERS", str(2 * (os.cpu_count() or 1) + 1))
        threads = os.environ.get("BENCH_GUNICORN_THREADS", "2")
        # gthread workers keep client connections alive (sync workers close each one),
        # as a partner's client and a browser expect of a production server.
        argv = [
            str(gunicorn),
            "portal.wsgi:application",
            *("--bind", f"127.0.0.1:{port}"),
            *("--workers", workers, "--worker-class", "gthread", "--threads", threads),
            # No access log: it would write QIDO query strings (PatientID, names) to disk.
            *("--keep-alive", "30"),
        ]
        kind = (
            f"gunicorn ({workers} gthread workers x {threads} threads, keep-alive; "
            "/static/ served from collectstatic output)"
        )
    else:
        # DEBUG is off, so runserver serves /static/ only with --insecure.
        argv = [PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"]
        kind = "runserver --insecure (threaded)"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process, kind
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer /healthz within 60 s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


# --- Browser ------------------------------------------------------------------------------


def sign_in(browser, base: str, slug: str, login: tuple[str, str, str], static_root: Path | None):
    """Sign in once; returns (storage state, viewer URL of the clinic's only study)."""
    email, password, totp_uri = login
    context = new_context(browser, None, base, static_root)
    page = context.new_page()
    page.goto(f"{base}/accounts/login/?next=/t/{slug}/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/accounts/verify/**")
    page.get_by_label("Code").fill(totp_now(totp_uri))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"**/t/{slug}/")
    link = page.locator(f"table.worklist a[href*='/t/{slug}/studies/']").first
    href = link.get_attribute("href")
    if not href:
        raise RuntimeError("no study link on the worklist")
    state = context.storage_state()
    context.close()
    return state, f"{base}{href.rstrip('/')}/viewer/"


def new_context(browser, state, base: str, static_root: Path | None):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, storage_state=state)
    context.add_init_script(INIT_SCRIPT)
    if static_root is not None:  # gunicorn: stand in for the reverse proxy that serves /static/

        def serve(route) -> None:
            relative = urlparse(route.request.url).path.removeprefix("/static/")
            target = (static_root / relative).resolve()
            if target.is_relative_to(static_root) and target.is_file():
                route.fulfill(path=str(target))
            else:
                route.fulfill(status=404)

        context.route(f"{base}/static/**", serve)
    return context


def open_viewer(browser, state, base: str, url: str, static_root: Path | None):
    context = new_context(browser, state, base, static_root)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
    page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))
    response = page.goto(url)
    if response is None or response.status != 200:
        raise RuntimeError(f"viewer page answered {response and response.status}")
    page.wait_for_selector("#viewer[data-first-image-ms]", state="attached", timeout=120_000)
    return context, page, errors


def run_once(browser, state, base: str, url: str, static_root: Path | None) -> dict:
    result: dict = {}
    # Prefetched: first image, then wait for every slice to be cached, then scroll.
    context, page, errors = open_viewer(browser, state, base, url, static_root)
    try:
        load = page.evaluate(LOAD_TIMINGS_JS)
        page.wait_for_selector(
            "#viewer[data-all-loaded-ms]", state="attached", timeout=PREFETCH_TIMEOUT_MS
        )
        all_loaded = float(page.locator("#viewer").get_attribute("data-all-loaded-ms") or "nan")
        result["prefetched_load"] = load
        result["all_loaded_from_script_ms"] = all_loaded
        result["all_loaded_ms"] = (
            all_loaded + load["script_start"] if load["script_start"] is not None else None
        )
        result["frame_interval_ms"] = page.evaluate(FRAME_INTERVAL_JS)
        result["prefetch_frames"] = page.evaluate(FRAME_REQUESTS_JS)
        result["prefetched"] = page.evaluate(SCROLL_JS, {"timeoutMs": STEP_TIMEOUT_MS})
        result["prefetched_errors"] = errors
    finally:
        context.close()
    # Cold: scroll as soon as the first image is up, while the prefetch is still running.
    context, page, errors = open_viewer(browser, state, base, url, static_root)
    try:
        result["cold"] = page.evaluate(SCROLL_JS, {"timeoutMs": STEP_TIMEOUT_MS})
        result["cold_load"] = page.evaluate(LOAD_TIMINGS_JS)
        result["cold_frames"] = page.evaluate(FRAME_REQUESTS_JS)
        result["cold_errors"] = errors
    finally:
        context.close()
    return result


# --- Summary ------------------------------------------------------------------------------


def scroll_summary(scroll: dict) -> dict:
    ms = [s["ms"] for s in scroll["steps"]]
    waited = [s["slice"] for s in scroll["steps"] if s["network"]]
    slowest = sorted(scroll["steps"], key=lambda s: -s["ms"])[:5]
    return {
        "steps": len(ms),
        "total_ms": round(scroll["total"], 1),
        "per_slice_p50_ms": round(percentile(ms, 50), 1),
        "per_slice_p95_ms": round(percentile(ms, 95), 1),
        "per_slice_max_ms": round(max(ms), 1),
        "slices_waiting_for_network": len(waited),
        "first_slices_waiting": waited[:10],
        "slowest": [{"slice": s["slice"], "ms": round(s["ms"], 1)} for s in slowest],
    }


def frames_summary(frames: list[dict]) -> dict:
    ttfb = [f["ttfb"] for f in frames]
    span = (max(f["end"] for f in frames) - min(f["start"] for f in frames)) if frames else 0
    return {
        "requests": len(frames),
        "server_wait_p50_ms": round(percentile(ttfb, 50), 1),
        "server_wait_p95_ms": round(percentile(ttfb, 95), 1),
        "server_wait_max_ms": round(max(ttfb), 1) if ttfb else None,
        "first_to_last_ms": round(span, 1),
        "frames_per_second": round(len(frames) / span * 1000, 1) if span else None,
    }


def load_summary(load: dict) -> dict:
    def r(v):
        return round(v, 1) if isinstance(v, int | float) else v

    out = {k: r(v) for k, v in load.items() if not isinstance(v, dict)}
    for key in ("viewer_js", "metadata", "first_frame"):
        if load.get(key):
            out.update({f"{key}_{k}": r(v) for k, v in load[key].items()})
    return out


def summarise(runs: list[dict]) -> dict:
    load_rows = [
        {"run": number, "open": kind, **load_summary(r[f"{kind}_load"])}
        for number, r in enumerate(runs, 1)
        for kind in ("prefetched", "cold")
    ]
    warm = [scroll_summary(r["prefetched"]) for r in runs]
    cold = [scroll_summary(r["cold"]) for r in runs]
    prefetch = [frames_summary(r["prefetch_frames"]) for r in runs]
    cold_frames = [frames_summary(r["cold_frames"]) for r in runs]

    def med(rows: list[dict], key: str):
        return median([row.get(key) for row in rows])

    def med_block(rows: list[dict]) -> dict:
        keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and k != "run"]
        return {k: med(rows, k) for k in keys}

    return {
        "first_image_ms": {
            "median": med(load_rows, "first_image"),
            "runs": [row["first_image"] for row in load_rows],
            "breakdown_median_ms_from_navigation": med_block(load_rows),
            "loads": load_rows,
        },
        "prefetch_complete_ms": {
            "median": median([r["all_loaded_ms"] for r in runs]),
            "median_from_script_start": median([r["all_loaded_from_script_ms"] for r in runs]),
            "runs": [r["all_loaded_ms"] and round(r["all_loaded_ms"], 1) for r in runs],
            "frame_requests_median": med_block(prefetch),
        },
        "scroll_prefetched": {**med_block(warm), "runs": warm},
        "scroll_cold": {
            **med_block(cold),
            "frame_requests_median": med_block(cold_frames),
            "runs": cold,
        },
        "frame_interval_ms": median([r["frame_interval_ms"] for r in runs]),
        "page_errors": sorted({e for r in runs for e in r["prefetched_errors"] + r["cold_errors"]}),
    }


def print_summary(result: dict) -> None:
    s = result
    fi, pf = s["first_image_ms"], s["prefetch_complete_ms"]
    bd = fi["breakdown_median_ms_from_navigation"]
    print(f"\nViewer benchmark: {s['slices']} slices {s['size']}x{s['size']} CT, {s['runs']} runs")
    print(f"  server {s['server']}, database {s['database']}, {s['machine']['cpus']} CPUs")
    print(f"  time to first image:   {fi['median']} ms from navigation (runs {fi['runs']})")
    print(
        f"    html {bd.get('html_end')} ms, viewer.js start {bd.get('script_start')} ms, "
        f"metadata {bd.get('metadata_start')}..{bd.get('metadata_end')} ms "
        f"(server wait {bd.get('metadata_ttfb')} ms), first frame "
        f"{bd.get('first_frame_start')}..{bd.get('first_frame_end')} ms"
    )
    print(f"  prefetch complete:     {pf['median']} ms from navigation (runs {pf['runs']})")
    fr = pf["frame_requests_median"]
    print(
        f"    {fr['requests']} frame requests, server wait p50 {fr['server_wait_p50_ms']} ms "
        f"p95 {fr['server_wait_p95_ms']} ms, {fr['frames_per_second']} frames/s"
    )
    for name in ("scroll_prefetched", "scroll_cold"):
        sc = s[name]
        print(
            f"  {name.replace('_', ' ')}: {sc['total_ms']} ms for {sc['steps']} steps, "
            f"per slice p50 {sc['per_slice_p50_ms']} ms p95 {sc['per_slice_p95_ms']} ms "
            f"max {sc['per_slice_max_ms']} ms, "
            f"{sc['slices_waiting_for_network']} slices waited for the network"
        )
    print(f"  display frame interval {s['frame_interval_ms']} ms (floor per slice)")
    if s["page_errors"]:
        print(f"  page errors: {s['page_errors'][:5]}")
    print(f"  written to {RESULTS.relative_to(ROOT)}")


# --- Main ---------------------------------------------------------------------------------


def throwaway_portal_env(work: Path) -> dict[str, str]:
    """The environment of a bench's own portal: its data under `work`, DEBUG off, on
    loopback; a key file made under `work` and local storage, never the caller's."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_DATA_DIR": str(work / "data"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-" + secrets.token_hex(32)),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
    }
    for name in ("PORTAL_MASTER_KEY", "PORTAL_MASTER_KEY_FILE", "STORAGE_ROOT"):
        env.pop(name, None)
    return env


def main() -> None:
    from playwright.sync_api import sync_playwright

    runs = int(os.environ.get("BENCH_VIEWER_RUNS", "3"))
    slices = int(os.environ.get("BENCH_VIEWER_SLICES", "300"))
    work = Path(tempfile.mkdtemp(prefix="portal-viewer-bench-"))
    server = None
    log = work / "server.log"
    env = throwaway_portal_env(work)
    env.pop("REDIS_URL", None)  # embedded default: filesystem broker, no worker
    database, slug = "sqlite", "bench"
    if os.environ.get("DATABASE_URL"):
        # A shared database may hold an earlier run's clinic: a fresh slug every time.
        database, slug = (
            urlparse(os.environ["DATABASE_URL"]).scheme,
            f"bench-{secrets.token_hex(3)}",
        )
    try:
        started = time.perf_counter()
        manage(env, "migrate", "--noinput")
        manage(env, "init_master_key")
        manage(env, "create_tenant", slug, "--name", "Bench")
        email, password = f"rad@{slug}.example", "bench-" + secrets.token_urlsafe(18)
        out = manage(
            env,
            *("create_user", email, "--tenant", slug, "--role", "radiologist"),
            *("--password-stdin", "--totp"),
            stdin=password + "\n",
        )
        totp_uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
        series_bytes = synthetic_ct_files(work / "ct", slices=slices)
        ingest_started = time.perf_counter()
        ingested = manage(env, "ingest", str(work / "ct"), "--tenant", slug).strip()
        ingest_seconds = time.perf_counter() - ingest_started
        if f"stored {slices}," not in ingested:
            raise RuntimeError(f"ingest: {ingested}")
        print(f"set-up done in {time.perf_counter() - started:.1f} s ({ingested})")

        static_root = None
        if Path(os.environ.get("BENCH_GUNICORN", VENV_BIN / "gunicorn")).exists():
            manage(env, "collectstatic", "--noinput")
            static_root = (work / "data" / "static").resolve()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server, server_kind = start_server(env, port, log)

        details = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                login = (email, password, totp_uri)
                state, viewer_url = sign_in(browser, base, slug, login, static_root)
                for number in range(1, runs + 1):
                    details.append(run_once(browser, state, base, viewer_url, static_root))
                    d = details[-1]
                    print(
                        f"run {number}: first image {d['prefetched_load']['first_image']:.0f} / "
                        f"{d['cold_load']['first_image']:.0f} ms, prefetch complete "
                        f"{d['all_loaded_ms']:.0f} ms, scroll prefetched "
                        f"{d['prefetched']['total']:.0f} ms, cold {d['cold']['total']:.0f} ms"
                    )
                chromium_version = browser.version
            finally:
                browser.close()

        result = {
            "slices": slices,
            "size": 512,
            "series_megabytes": round(series_bytes / 1e6, 1),
            "runs": runs,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "chromium": chromium_version,
            },
            "server": server_kind,
            "database": database,
            "ingest_seconds": round(ingest_seconds, 1),
            **summarise(details),
        }
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print_summary(result)
    except Exception:
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print("server log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
