"""Benchmark: the portal side by side with Orthanc, same data, same client, over loopback.

Set-up (all throwaway, under a temporary folder):
- Orthanc and its DICOMweb plugin from Debian's packages (`apt-get install orthanc
  orthanc-dicomweb` when missing; needs root), run as a private instance on free loopback
  ports with its default SQLite index, not the system service;
- the portal under gunicorn (gthread workers, keep-alive) on PostgreSQL (a fresh database
  `portal_bench`) with a Redis-backed Celery worker; encryption is always on;
- synthetic data: a 300-slice 512x512 CT series (158 MB) and N small studies (default
  2,000; 100 of them share one PatientID for the 100-hit search).

Every figure is measured in the same run for both servers with the same client code
(the read figures in alternating rounds, so that the machine's drift falls on both):
dicomweb-client (`DICOMwebClient`) for STOW-RS and QIDO-RS, and its `requests` session for
WADO-RS, so the bytes are counted as they arrive rather than parsed into datasets.

- `stow_1client`: instances/s storing the CT series, one client, 10 instances per request;
- `stow_4clients`: instances/s storing the small studies with four clients in parallel;
- `qido_exact`: p50 latency of a study search by an exact PatientID among N studies;
- `qido_100hits`: p50 latency of a study search returning 100 studies;
- `wado_series`: MB/s retrieving the whole CT series as multipart DICOM (median of 15);
- `rendered_frame`: p50 latency of a rendered (JPEG) frame of the CT series;
- `series_metadata`: p50 latency of the CT series' metadata (300 instances).

Writes `bench/results.json` (with `ratios`: portal divided by Orthanc, and the targets),
`bench/RESULTS.md` and `bench/results.png`. The 1 GB STOW-RS memory figure comes from
`bench/stow_memory.py` (`bench/stow_results.json`), which `make bench` runs first.

Environment: BENCH_STUDIES (default 2000), BENCH_SLICES (default 300), DATABASE_URL
(default postgres://portal:portal@127.0.0.1:5432/portal_bench, recreated each run),
REDIS_URL (default redis://127.0.0.1:6379/7), BENCH_GUNICORN_WORKERS.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from viewer_bench import (
    ROOT,
    VENV_BIN,
    free_port,
    manage,
    percentile,
    start_server,
    stop_server,
    synthetic_ct_files,
    throwaway_portal_env,
)

RESULTS_JSON = ROOT / "bench" / "results.json"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
RESULTS_PNG = ROOT / "bench" / "results.png"
STOW_MEMORY_JSON = ROOT / "bench" / "stow_results.json"
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
BATCH = 10
BULK_PATIENT_ID = "BULK-100"
SERIES_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# name: (unit, higher is better, target ratio portal/Orthanc)
FIGURES: dict[str, tuple[str, bool, float]] = {
    "stow_1client": ("instances/s", True, 2.0),
    "stow_4clients": ("instances/s", True, 1.5),
    "qido_exact": ("ms p50", False, 1.0),
    "qido_100hits": ("ms p50", False, 0.2),
    "wado_series": ("MB/s", True, 0.5),
    "rendered_frame": ("ms p50", False, 1.0),
    "series_metadata": ("ms p50", False, 0.5),
}


# --- Services ---------------------------------------------------------------------------


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)  # noqa: S603


def ensure_orthanc() -> None:
    plugin = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
    if ORTHANC.exists() and plugin.exists():
        return
    print("installing Orthanc and its DICOMweb plugin from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_get = shutil.which("apt-get") or "/usr/bin/apt-get"
    subprocess.run(  # noqa: S603 - fixed argv
        [apt_get, "install", "-y", "--no-install-recommends", "orthanc", "orthanc-dicomweb"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # The package may start its system service; this benchmark runs its own instance.
    run("service", "orthanc", "stop", check=False)


def wait_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our loopback URL
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds} s; see {log}")


def start_orthanc(work: Path) -> tuple[subprocess.Popen, str]:
    port, dicom_port = free_port(), free_port()
    storage = work / "orthanc"
    storage.mkdir()
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "StorageCompression": False,
        "HttpThreadsCount": 50,
        "Plugins": [str(ORTHANC_PLUGINS)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = work / "orthanc.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603
            [str(ORTHANC), str(work / "orthanc.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_http(f"http://127.0.0.1:{port}/system", process, log)
    return process, f"http://127.0.0.1:{port}/dicom-web"


def background_settled(database_url: str, seconds: float = 600) -> None:
    """Wait until the portal's worker has made every thumbnail the stores queued.

    Orthanc does no work after a store; the read figures compare quiet servers.
    """
    name = urlparse(database_url).path.lstrip("/")
    sql = "SELECT count(*) FROM imaging_series WHERE thumbnail_status = 'pending'"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pending = run("runuser", "-u", "postgres", "--", "psql", "-At", "-d", name, "-c", sql)
        if pending.stdout.strip() == "0":
            return
        time.sleep(1)
    raise RuntimeError("the portal's worker did not finish the thumbnails in time")


def ensure_postgres_and_redis(database_url: str, redis_url: str) -> None:
    if run("pg_isready", "-h", "127.0.0.1", check=False).returncode != 0:
        run("pg_ctlcluster", "15", "main", "start", check=False)
    if run("redis-cli", "-u", redis_url, "ping", check=False).stdout.strip() != "PONG":
        run("redis-server", "--daemonize", "yes", check=False)
        time.sleep(0.5)
    run("redis-cli", "-u", redis_url, "flushdb", check=False)
    url = urlparse(database_url)
    name, owner = url.path.lstrip("/"), url.username or "portal"
    for sql in (f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}" OWNER "{owner}"'):
        run("runuser", "-u", "postgres", "--", "psql", "-q", "-c", sql)


def portal_env(work: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """The environment the bench's portal processes run with (data under `work`)."""
    return {
        **throwaway_portal_env(work),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_RATE_LIMIT_PER_MINUTE": "0",  # the benchmark is one partner at full speed
    }


def bench_clinic(env: dict[str, str], root: Path = ROOT) -> str:
    """Migrate, make the master key and the clinic `bench`; its read-write API token.

    `root` is the checkout whose code (and migrations) to use.
    """
    manage(env, "migrate", "--noinput", root=root)
    manage(env, "init_master_key", root=root)
    manage(env, "create_tenant", "bench", "--name", "Bench", root=root)
    created = manage(
        env,
        *("create_api_token", "--tenant", "bench", "--name", "bench"),
        *("--scopes", "dicomweb:read,dicomweb:write"),
        root=root,
    )
    return created.splitlines()[-1].strip()


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603
            [str(VENV_BIN / "celery"), "-A", "portal", "worker", "-c", "1", "-l", "WARNING"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --- Data -------------------------------------------------------------------------------


def small_studies(count: int) -> list[bytes]:
    """One 64x64 CT instance per study; the first 100 share BULK_PATIENT_ID."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).tobytes()
    files = []
    for index in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName = f"Bench^Patient{index:06d}"
        ds.PatientID = BULK_PATIENT_ID if index < 100 else f"BENCH-{index:06d}"
        ds.PatientBirthDate, ds.StudyDate, ds.StudyTime = "19700101", "20260101", "120000"
        ds.AccessionNumber, ds.StudyDescription = f"ACC{index:06d}", "Bench small study"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


# --- Measurements -----------------------------------------------------------------------


def client_for(url: str, token: str | None):
    from dicomweb_client.api import DICOMwebClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url=url, headers=headers)


def stow(client, files: list[bytes]) -> int:
    import pydicom
    import requests

    stored = 0
    for start in range(0, len(files), BATCH):
        datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files[start : start + BATCH]]
        try:
            client.store_instances(datasets)
        except requests.HTTPError as exc:
            raise RuntimeError(f"STOW-RS refused: {exc.response.text[:500]}") from exc
        stored += len(datasets)
    return stored


def stow_rate(make_client: Callable[[], object], files: list[bytes], clients: int) -> float:
    parts = [files[i::clients] for i in range(clients)]
    errors: list[BaseException] = []

    def work(chunk: list[bytes]) -> None:
        try:
            stow(make_client(), chunk)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in parts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return len(files) / elapsed


def latencies(call: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def get(session, url: str, accept: str) -> int:
    """GET `url`, reading the body as it streams; returns its size in bytes."""
    with session.get(url, headers={"Accept": accept}, stream=True) as response:
        response.raise_for_status()
        return sum(len(chunk) for chunk in response.iter_content(chunk_size=1 << 20))


# --- CPU used by each side (Linux /proc) --------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used so far, its reaped children's too)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # After the name: state, ppid, ... utime (12th), stime, cutime, cstime.
        ticks = sum(int(v) for v in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), name, ticks / _TICKS)
    return table


def server_cpu_seconds(roots: list[int], names: tuple[str, ...] = ()) -> float:
    """CPU seconds used by `roots` and their descendants, and by processes named `names`."""
    table = _processes()
    wanted = set(roots) | {pid for pid, (_, name, _) in table.items() if name.startswith(names)}
    grew = True
    while grew:
        children = {pid for pid, (parent, _, _) in table.items() if parent in wanted}
        grew = not children <= wanted
        wanted |= children
    return sum(table[pid][2] for pid in wanted if pid in table)


class Side:
    """One server under test: its address, credential, and the processes doing its work
    by group (name -> (root pids, whose descendants count too; command names))."""

    def __init__(
        self,
        name: str,
        url: str,
        token: str | None,
        groups: dict[str, tuple[list[int], tuple[str, ...]]],
    ):
        self.name, self.url, self.token, self.groups = name, url, token, groups

    def cpu(self) -> dict[str, float]:
        return {
            group: server_cpu_seconds(roots, names) for group, (roots, names) in self.groups.items()
        }


def timed_stow(side: Side, files: list[bytes], clients: int) -> tuple[float, dict[str, float]]:
    """(instances/s, CPU ms per instance of each group of the server's processes and of
    the client)."""
    server_before, client_before = side.cpu(), time.process_time()
    rate = stow_rate(lambda: client_for(side.url, side.token), files, clients)
    server_after = side.cpu()
    cpu = {
        group: (server_after[group] - server_before[group]) * 1000 / len(files)
        for group in server_before
    }
    cpu["server"] = sum(cpu.values())
    cpu["client"] = (time.process_time() - client_before) * 1000 / len(files)
    return rate, cpu


def store_figures(side: Side, ct_files, small) -> tuple[dict, dict]:
    """The two STOW-RS figures, and the CPU each took per instance on either side.

    On two CPUs shared by the client and the server, the CPU a server spends per
    instance bounds its rate once both CPUs are busy (four clients).
    """
    print(f"[{side.name}] STOW-RS, one client: {len(ct_files)} CT instances")
    figures: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    figures["stow_1client"], cpu["stow_1client"] = timed_stow(side, ct_files, 1)
    print(f"[{side.name}] STOW-RS, four clients: {len(small)} small studies")
    figures["stow_4clients"], cpu["stow_4clients"] = timed_stow(side, small, 4)
    return figures, cpu


# The read figures are taken in rounds, the two servers alternating (and which goes first
# too): this VM's speed drifts by 20-30 % over minutes, and measuring one server's reads
# all before the other's let that drift into the ratios.
READ_ROUNDS = 5
# Each whole-series retrieve is one sample of a figure the VM moves by 20-50 % from one
# request to the next: three a round give the median fifteen samples instead of five.
WADO_PER_ROUND = 3


class Reader:
    """One server's read figures, a round at a time, over one client kept alive."""

    def __init__(self, url: str, token: str | None, ct_files: list[bytes], small: list[bytes]):
        import pydicom

        self.client = client_for(url, token)
        self.session = self.client._session  # the client's own session (auth headers set)
        first = pydicom.dcmread(io.BytesIO(ct_files[0]), stop_before_pixels=True)
        self.series_url = f"{url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        sops = [
            pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID for f in ct_files
        ]
        wanted = [f"BENCH-{i:06d}" for i in range(100, len(small), max(1, len(small) // 50))]
        self.ids = iter(wanted * 10)
        self.frames = iter(sops[1:] * 3)  # each frame once before any is asked again
        self.samples: dict[str, list[float]] = {
            key: [] for key in FIGURES if not key.startswith("stow")
        }
        self.wado_bytes = 0

    def qido_exact(self) -> None:
        found = self.client.search_for_studies(search_filters={"PatientID": next(self.ids)})
        assert len(found) == 1, len(found)

    def qido_100(self) -> None:
        found = self.client.search_for_studies(
            search_filters={"PatientID": BULK_PATIENT_ID}, limit=100
        )
        assert len(found) == 100, len(found)

    def rendered(self) -> None:
        frame_url = f"{self.series_url}/instances/{next(self.frames)}/frames/1/rendered"
        get(self.session, frame_url, "image/jpeg")

    def metadata(self) -> None:
        get(self.session, f"{self.series_url}/metadata", "application/dicom+json")

    def round(self) -> None:
        self.samples["qido_exact"] += latencies(self.qido_exact, 50 // READ_ROUNDS)
        self.samples["qido_100hits"] += latencies(self.qido_100, 20 // READ_ROUNDS)
        for _ in range(WADO_PER_ROUND):
            started = time.perf_counter()
            self.wado_bytes = get(self.session, self.series_url, SERIES_ACCEPT)
            elapsed = time.perf_counter() - started
            self.samples["wado_series"].append(self.wado_bytes / 1e6 / elapsed)
        self.samples["rendered_frame"] += latencies(self.rendered, 30 // READ_ROUNDS)
        self.samples["series_metadata"] += latencies(self.metadata, 10 // READ_ROUNDS, warmup=1)

    def figures(self) -> dict[str, float]:
        figures = {key: statistics.median(values) for key, values in self.samples.items()}
        figures["wado_series_bytes"] = self.wado_bytes
        figures["series_metadata_p95"] = percentile(self.samples["series_metadata"], 95)
        return figures


def read_figures(readers: dict[str, Reader]) -> None:
    names = list(readers)
    for index in range(READ_ROUNDS):
        order = names if index % 2 == 0 else names[::-1]
        print(f"reads, round {index + 1} of {READ_ROUNDS}: {' then '.join(order)}")
        for name in order:
            readers[name].round()


def qido_at_scale(url: str, token: str, studies: int, runs: int = 200) -> dict:
    import random

    client = client_for(url, token)
    # bulk_studies.py numbers its patients from the count already stored (about 2,000).
    picks = random.Random(7).sample(range(studies // 2, studies), runs)  # noqa: S311
    ids = iter(f"BULK-{index:07d}" for index in picks)

    def search() -> None:
        client.search_for_studies(search_filters={"PatientID": next(ids)})

    times = latencies(search, runs - 2)
    return {
        "studies": studies,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 95), 2),
    }


# --- Report -----------------------------------------------------------------------------


def ratios(portal: dict, orthanc: dict) -> dict[str, float]:
    return {key: round(portal[key] / orthanc[key], 3) for key in FIGURES if orthanc.get(key)}


def met(name: str, ratio: float) -> bool:
    _, higher, target = FIGURES[name]
    return ratio >= target if higher else ratio <= target


def write_markdown(result: dict) -> None:
    lines = [
        "# The portal side by side with Orthanc",
        "",
        f"Measured {result['measured_at']} on {result['machine']['cpus']} CPUs, "
        f"Python {result['machine']['python']}, {result['setup']['portal']}; "
        f"{result['setup']['orthanc']}. Same data, same client (dicomweb-client), loopback. "
        "Reproduce with `make bench`; how each figure is taken is in `bench/orthanc_compare.py`.",
        "",
        "| figure | unit | portal | Orthanc | portal / Orthanc | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for key, (unit, higher, target) in FIGURES.items():
        ratio = result["ratios"].get(key)
        sign = "≥" if higher else "≤"
        lines.append(
            f"| `{key}` | {unit} | {result['portal'][key]:.1f} | {result['orthanc'][key]:.1f} | "
            f"{ratio:.2f} | {sign} {target} | {'yes' if result['met'][key] else '**no**'} |"
        )
    scale = result.get("qido_at_scale")
    if scale:
        lines += [
            "",
            f"QIDO-RS by exact PatientID at {scale['studies']:,} studies (portal, PostgreSQL): "
            f"p50 {scale['p50_ms']:.1f} ms, p95 {scale['p95_ms']:.1f} ms (aim: p95 under 20 ms).",
        ]
    cpu = result.get("stow_cpu_ms_per_instance")
    if cpu:
        lines += [
            "",
            "CPU per stored instance, in ms: the server's processes (the portal's web workers, "
            "its Celery worker making thumbnails, PostgreSQL with Redis; Orthanc's one "
            "process) and the benchmark's client, the same code for both:",
            "",
            "| figure | portal: web | tasks | database | portal in all | Orthanc | "
            "client (portal / Orthanc) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key in ("stow_1client", "stow_4clients"):
            portal, orthanc = cpu["portal"][key], cpu["orthanc"][key]
            lines.append(
                f"| `{key}` | {portal['web']:.2f} | {portal['tasks']:.2f} | "
                f"{portal['database']:.2f} | {portal['server']:.2f} | {orthanc['server']:.2f} | "
                f"{portal['client']:.2f} / {orthanc['client']:.2f} |"
            )
    memory = result.get("stow_memory")
    if memory:
        lines += [
            "",
            f"Peak extra memory during one {memory['request_megabytes']:.0f} MB STOW-RS request: "
            f"{memory['peak_rss_growth_mb']:.0f} MB RSS growth (target under 200 MB; "
            "`bench/stow_memory.py`).",
        ]
    lines += ["", "![portal and Orthanc](results.png)", ""]
    notes = RESULTS_MD.read_text().split("<!-- notes -->", 1) if RESULTS_MD.exists() else []
    lines += ["<!-- notes -->", notes[1].strip() if len(notes) == 2 else ""]
    RESULTS_MD.write_text("\n".join(lines).rstrip() + "\n")


def write_chart(result: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no chart")
        return
    keys = list(FIGURES)
    values = [result["ratios"][k] for k in keys]
    targets = [FIGURES[k][2] for k in keys]
    colours = ["#1a7f37" if result["met"][k] else "#a4161a" for k in keys]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    axes.bar(keys, values, color=colours)
    axes.scatter(keys, targets, marker="_", s=900, color="black", label="target", zorder=3)
    axes.axhline(1.0, color="#888", linewidth=0.8)
    axes.set_ylabel("portal / Orthanc")
    axes.set_yscale("log")
    axes.set_title("Portal divided by Orthanc (green: target met; higher is better for STOW/WADO)")
    axes.legend()
    plt.setp(axes.get_xticklabels(), rotation=20, ha="right")
    figure.tight_layout()
    figure.savefig(RESULTS_PNG, dpi=110)


def main() -> None:
    studies = int(os.environ.get("BENCH_STUDIES", "2000"))
    slices = int(os.environ.get("BENCH_SLICES", "300"))
    database_url = os.environ.get(
        "DATABASE_URL", "postgres://portal:portal@127.0.0.1:5432/portal_bench"
    )
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7")
    ensure_orthanc()
    ensure_postgres_and_redis(database_url, redis_url)
    work = Path(tempfile.mkdtemp(prefix="portal-orthanc-bench-"))
    env = portal_env(work, database_url, redis_url)
    processes: list[subprocess.Popen] = []
    try:
        token = bench_clinic(env)
        workers = os.environ.get("BENCH_GUNICORN_WORKERS", str(2 * (os.cpu_count() or 1) + 1))
        env["BENCH_GUNICORN_WORKERS"] = workers
        port = free_port()
        server, kind = start_server(env, port, work / "portal.log")
        processes.append(server)
        worker = start_worker(env, work / "worker.log")
        processes.append(worker)
        orthanc, orthanc_url = start_orthanc(work)
        processes.append(orthanc)
        version = run(str(ORTHANC), "--version").stdout.splitlines()[0]

        print(f"generating data: {slices}-slice CT and {studies} small studies")
        synthetic_ct_files(work / "ct", slices=slices)
        ct_files = [p.read_bytes() for p in sorted((work / "ct").glob("*.dcm"))]
        small = small_studies(studies)

        portal_url = f"http://127.0.0.1:{port}/dicomweb"
        # The portal's work is done by gunicorn's workers, the Celery worker (thumbnails),
        # PostgreSQL and Redis; Orthanc's by its one process.
        portal_side = Side(
            "portal",
            portal_url,
            token,
            {
                "web": ([server.pid], ()),
                "tasks": ([worker.pid], ()),
                "database": ([], ("postgres", "redis")),
            },
        )
        orthanc_side = Side("Orthanc", orthanc_url, None, {"web": ([orthanc.pid], ())})
        orthanc_figures, orthanc_cpu = store_figures(orthanc_side, ct_files, small)
        portal_figures, portal_cpu = store_figures(portal_side, ct_files, small)
        background_settled(database_url)
        readers = {
            "Orthanc": Reader(orthanc_url, None, ct_files, small),
            "portal": Reader(portal_url, token, ct_files, small),
        }
        read_figures(readers)
        orthanc_figures.update(readers["Orthanc"].figures())
        portal_figures.update(readers["portal"].figures())
        scale = int(os.environ.get("BENCH_QIDO_SCALE", "100000"))
        print(f"[portal] QIDO-RS at {scale} studies (index rows added by bench/bulk_studies.py)")
        subprocess.run(  # noqa: S603 - fixed argv
            [str(VENV_BIN / "python"), str(ROOT / "bench" / "bulk_studies.py"), str(scale)],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        at_scale = qido_at_scale(f"http://127.0.0.1:{port}/dicomweb", token, scale)
        result = {
            "qido_at_scale": at_scale,
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "setup": {
                "portal": f"{kind}, PostgreSQL, Redis-backed Celery worker, encryption on",
                "orthanc": f"{version} with the Debian DICOMweb plugin, SQLite index",
                "ct_series": {"slices": slices, "bytes": sum(len(f) for f in ct_files)},
                "small_studies": studies,
                "stow_batch": BATCH,
            },
            "portal": {k: round(v, 2) for k, v in portal_figures.items()},
            "orthanc": {k: round(v, 2) for k, v in orthanc_figures.items()},
        }
        result["ratios"] = ratios(portal_figures, orthanc_figures)
        result["targets"] = {
            k: {"unit": u, "ratio": t, "higher_is_better": h} for k, (u, h, t) in FIGURES.items()
        }
        result["met"] = {k: met(k, r) for k, r in result["ratios"].items()}
        result["wado_series_above_500_mb_s"] = portal_figures["wado_series"] > 500
        result["stow_cpu_ms_per_instance"] = {
            "portal": {k: {n: round(v, 2) for n, v in c.items()} for k, c in portal_cpu.items()},
            "orthanc": {k: {n: round(v, 2) for n, v in c.items()} for k, c in orthanc_cpu.items()},
        }
        if STOW_MEMORY_JSON.exists():
            result["stow_memory"] = json.loads(STOW_MEMORY_JSON.read_text())
        RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result)
        write_chart(result)
        print(json.dumps({"ratios": result["ratios"], "met": result["met"]}, indent=2))
    finally:
        for process in processes:
            stop_server(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
