"""Rendering pixel data to 8-bit previews. pydicom, numpy and Pillow; no ORM."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

# Window (centre, width) used when the file carries none.
MODALITY_WINDOWS = {"CT": (40.0, 400.0), "MR": None, "PT": None}


class RenderError(Exception):
    """The pixel data cannot be rendered (unsupported or corrupt)."""


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = pixels.astype(np.float64)
    low, high = np.percentile(pixels, (0.5, 99.5)) if pixels.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return (np.clip((pixels - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def frame_to_uint8(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """One frame as 8-bit grey or RGB, windowed and with MONOCHROME1 inverted."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if ds.get("SamplesPerPixel", 1) > 1:
        if photometric.startswith("YBR") and not ds.file_meta.TransferSyntaxUID.is_compressed:
            pixels = convert_color_space(pixels, photometric, "RGB")
        if pixels.dtype != np.uint8:
            pixels = _to_uint8(pixels)
        return pixels
    pixels = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        windowed = apply_voi_lut(pixels, ds, index=0)
        low, high = float(np.min(windowed)), float(np.max(windowed))
        out = (windowed - low) / ((high - low) or 1.0) * 255.0
        grey = np.clip(out, 0, 255).astype(np.uint8)
    elif MODALITY_WINDOWS.get(str(ds.get("Modality", ""))):
        centre, width = MODALITY_WINDOWS[str(ds.Modality)]  # type: ignore[misc]
        low = centre - width / 2
        grey = (np.clip((pixels - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        grey = _to_uint8(pixels)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def thumbnail_png(data: bytes, *, max_size: int = 256) -> bytes:
    """A PNG of the middle frame of one instance, at most `max_size` pixels wide or high."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = ds.pixel_array
        if frames > 1:
            pixels = pixels[frames // 2]
        image = Image.fromarray(frame_to_uint8(ds, pixels))
    except Exception as exc:  # codecs raise many kinds of errors on bad data
        raise RenderError(f"{type(exc).__name__}: {exc}"[:200]) from None
    image.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
