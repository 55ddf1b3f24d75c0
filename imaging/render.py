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


def frame_count(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_pixels(ds: pydicom.Dataset, number: int) -> np.ndarray:
    """Frame `number` (1-based) as decoded pixels."""
    frames = frame_count(ds)
    if not 1 <= number <= frames:
        raise RenderError(f"frame {number} does not exist (the instance has {frames})")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}"[:200]) from None
    return pixels[number - 1] if frames > 1 else pixels


def frame_native_bytes(ds: pydicom.Dataset, number: int) -> bytes:
    """A frame as uncompressed little-endian pixel bytes (application/octet-stream)."""
    pixels = frame_pixels(ds, number)
    return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def rendered(
    ds: pydicom.Dataset,
    *,
    number: int = 1,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame rendered for display (PS3.18 rendered resources)."""
    pixels = frame_pixels(ds, number)
    if window is not None and ds.get("SamplesPerPixel", 1) == 1:
        centre, width = window
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        grey = (np.clip((values - (centre - width / 2)) / max(width, 1.0), 0, 1) * 255).astype(
            np.uint8
        )
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey)
    else:
        image = Image.fromarray(frame_to_uint8(ds, pixels))
    if viewport is not None:
        image.thumbnail(viewport)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=quality
        )
    return buffer.getvalue()
