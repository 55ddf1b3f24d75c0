"""Benchmark: memory a rendered frame takes, as a multiple of the frame.

Renders one large synthetic frame of each kind a viewer meets (a grey secondary capture
with no window, an MR with and without a rescale, a windowed CT, an RGB photograph, a
floating-point parametric map) through `imaging.render.frame_to_uint8`, the step every
rendered image and thumbnail takes, and reports the peak of Python's allocations
(tracemalloc, which numpy reports to) over the frame's own size. Target: at most 4x for
integer frames, whatever their size, so a frame passing `RENDER_MAX_FRAME_BYTES` cannot
take a worker's memory. Writes `bench/render_memory.json`; run with `make bench`.
"""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "render_memory.json"
SIDE = 4096
TARGET_TIMES = 4.0


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
    import django

    django.setup()
    from pydicom.dataset import Dataset

    from imaging.render import frame_to_uint8

    def header(modality: str, *, samples: int = 1, **tags: object) -> Dataset:
        ds = Dataset()
        ds.Modality = modality
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    rng = np.random.default_rng(0)
    cases = {
        "secondary capture, 8-bit, no window": (
            header("OT"),
            rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8),
        ),
        "MR, 16-bit, no window": (header("MR"), rng.integers(0, 4096, (SIDE, SIDE), np.uint16)),
        "MR, 16-bit, rescaled, no window": (
            header("MR", RescaleSlope=2, RescaleIntercept=-100),
            rng.integers(0, 4096, (SIDE, SIDE), np.uint16),
        ),
        "CT, 16-bit signed, windowed": (
            header("CT", RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
            rng.integers(-1024, 3000, (SIDE, SIDE), np.int16),
        ),
        "RGB photograph, 8-bit": (
            header("XC", samples=3),
            rng.integers(0, 256, (SIDE // 2, SIDE // 2, 3), np.uint8),
        ),
        "parametric map, float32": (
            header("MR"),
            rng.random((SIDE // 2, SIDE // 2), dtype=np.float32),
        ),
    }
    rows = []
    for name, (ds, pixels) in cases.items():
        tracemalloc.start()
        frame_to_uint8(ds, pixels)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        times = peak / pixels.nbytes
        integer = pixels.dtype.kind in "iu"
        rows.append(
            {
                "frame": name,
                "frame_megabytes": round(pixels.nbytes / 2**20, 1),
                "peak_megabytes": round(peak / 2**20, 1),
                "times_frame": round(times, 2),
                "target_times": TARGET_TIMES if integer else None,
                "met": times <= TARGET_TIMES if integer else None,
            }
        )
    RESULTS.write_text(json.dumps({"side": SIDE, "frames": rows}, indent=2) + "\n")
    print(f"{'frame':40} {'MiB':>7} {'peak MiB':>9} {'x frame':>8}")
    for row in rows:
        print(
            f"{row['frame']:40} {row['frame_megabytes']:7.1f} {row['peak_megabytes']:9.1f} "
            f"{row['times_frame']:8.2f}{'' if row['met'] is not False else '  MISSED'}"
        )
    if any(row["met"] is False for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
