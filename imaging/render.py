"""Rendering pixel data to 8-bit previews. pydicom, numpy and Pillow; no ORM."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import (
    apply_color_lut,
    as_pixel_options,
    get_decoder,
)
from pydicom.uid import UID

# Window (centre, width) used when the file carries none.
MODALITY_WINDOWS = {"CT": (40.0, 400.0), "MR": None, "PT": None}


class RenderError(Exception):
    """The pixel data cannot be rendered (unsupported or corrupt)."""


class NoSuchFrame(RenderError):
    """The frame asked for is not one of the instance's."""


class FrameTooLarge(RenderError):
    """One frame would decode to more bytes than `RENDER_MAX_FRAME_BYTES` allows."""


# Percentiles for a stretch are taken from at most this many pixels, evenly spaced:
# sorting a copy of every pixel of a large frame took more memory than the frame.
PERCENTILE_SAMPLE = 1 << 20


def _stretch_bounds(pixels: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of the rescaled values, from a sample."""
    flat = pixels.reshape(-1)
    if not flat.size:
        return 0.0, 1.0
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE)].astype(np.float64)
    low, high = np.percentile(sample * slope + intercept, (0.5, 99.5))
    if high <= low:  # one value throughout: mid-grey, neither black nor white
        return float(low) - 0.5, float(low) + 0.5
    return float(low), float(high)


def _to_uint8(pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """`pixels` rescaled, then stretched so their 0.5th to 99.5th percentiles span 0-255.

    Integer samples of up to 16 bits go through a table of every value their type holds
    (at most 65,536), so the frame is read once and only the 8-bit result allocated; the
    general path works in float32, in place.
    """
    low, high = _stretch_bounds(pixels, slope, intercept)
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        native = pixels.dtype.newbyteorder("=")
        codes = np.arange(1 << (8 * native.itemsize), dtype=f"u{native.itemsize}").view(native)
        values = codes.astype(np.float64) * slope + intercept
        table = (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
        index = np.ascontiguousarray(pixels, dtype=native).view(f"u{native.itemsize}")
        return table[index]  # np.take would first copy the index as 64-bit integers
    out = pixels.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        out *= slope
        out += intercept
    out -= low
    out *= 255.0 / (high - low)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def _number(value: object, default: float | None = None) -> float | None:
    """The first value of a DS or IS as a float; `default` if absent or not a number.

    Ingest keeps headers whose numbers are text ("abc", "1A"); rendering such a file
    uses the defaults rather than failing on them.
    """
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if value else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The first window the file names, or the modality's default; None if neither."""
    centre, width = _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        return centre, width
    return MODALITY_WINDOWS.get(str(ds.get("Modality", "")))


# Enhanced multi-frame objects (Enhanced CT, MR, XA, PET, ...) keep the rescale and the
# window in functional groups (PS3.3 C.7.6.16), shared by every frame or given for each,
# not at the top level. Their items hold the top level's attributes: RescaleSlope,
# RescaleIntercept, WindowCenter, WindowWidth, VOILUTFunction, and their LUT variants.
_FRAME_DISPLAY_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def _functional_groups(ds: pydicom.Dataset, number: int) -> list[pydicom.Dataset]:
    """The shared functional groups, then frame `number`'s, of those `ds` has."""
    groups = []
    for keyword, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", number - 1),
    ):
        sequence = ds.get(keyword)
        if isinstance(sequence, pydicom.Sequence) and 0 <= index < len(sequence):
            groups.append(sequence[index])
    return groups


def _display_elements(group: pydicom.Dataset) -> dict[Any, Any]:
    elements: dict[Any, Any] = {}
    for keyword in _FRAME_DISPLAY_MACROS:
        macro = group.get(keyword)
        if isinstance(macro, pydicom.Sequence) and len(macro):
            elements.update({element.tag: element for element in macro[0]})
    return elements


def frame_header(ds: pydicom.Dataset, number: int) -> pydicom.Dataset:
    """`ds` as frame `number` is displayed: with the rescale and window its functional
    groups give it (per frame over shared) in place of the top level's.

    `ds` itself if it has none; else a new dataset sharing `ds`'s elements, so the
    file read stays as it was for the next frame.
    """
    found: dict[Any, Any] = {}
    for group in _functional_groups(ds, number):
        found.update(_display_elements(group))
    if not found:
        return ds
    header = pydicom.Dataset(dict(ds.items()))
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    header.update(found)
    return header


def _display_varies_by_frame(ds: pydicom.Dataset) -> bool:
    """Whether frames differ in rescale or window (per-frame functional groups): scanners
    often repeat one window in every frame's group."""
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not isinstance(frames, pydicom.Sequence):
        return False
    first = None
    for group in frames:
        values = {tag: element.value for tag, element in _display_elements(group).items()}
        if first is None:
            first = values
        elif values != first:
            return True
    return False


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """(slope, intercept) of the modality LUT; the identity where the file has none."""
    return _number(ds.get("RescaleSlope"), 1.0) or 1.0, _number(ds.get("RescaleIntercept"), 0.0)


def _linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Rescaled values to grey levels 0-255 through a LINEAR window (PS3.3 C.11.2.1.2.1)."""
    if width <= 1:  # a width of 1 is a threshold at the centre
        return np.where(values < centre - 0.5, 0, 255).astype(np.uint8)
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _grey_table(
    dtype: str, slope: float, intercept: float, centre: float, width: float, inverted: bool
) -> np.ndarray:
    """The grey level of every value `dtype` can hold, indexed by its unsigned bits."""
    kind = np.dtype(dtype)
    stored = np.arange(1 << (8 * kind.itemsize), dtype=f"u{kind.itemsize}").view(kind)
    table = _linear_window(stored.astype(np.float64) * slope + intercept, centre, width)
    if inverted:
        table = 255 - table
    table.flags.writeable = False
    return table


def windowed_by_table(
    ds: pydicom.Dataset, pixels: np.ndarray, window: tuple[float, float] | None = None
) -> np.ndarray | None:
    """8-bit grey through a lookup table over the stored values, or None if not linear.

    The rescale (modality LUT) and the window (PS3.3 C.11.2.1.2.1, LINEAR) map each
    stored value to one grey level, so they are computed once per stored value a frame's
    type can hold (at most 65,536), and kept for the next frame of the series with the
    same rescale and window, instead of in floating point for every pixel: a 512x512 CT
    frame takes about 0.15 ms instead of 5. Files with a Modality or VOI LUT table,
    another VOI LUT function, or colour or floating-point pixels take the general path.
    """
    grey = _grey_inputs(ds)
    if grey is None or pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2:
        return None
    return _through_table(pixels, grey, window)


def _is_palette(ds: pydicom.Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR"


def _palette_rgb(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Palette colour indices through the file's red, green and blue tables (PS3.3
    C.7.6.3.1.5) as 8-bit RGB; an alpha table, if any, is not applied.

    Indices below the first mapped value take the first entry, those past the end the
    last. Entries of 16 bits span 0-65535 and keep their top byte; some writers put 8-bit
    values in 16-bit entries, and such a table (nothing above 255) is taken as the
    8-bit one it is rather than shown nearly black. The lookup is done here for plain
    tables: pydicom 3.0's indexes through the table's own type, so a table of more than
    256 8-bit entries wrapped its indices. Segmented tables are expanded by pydicom.
    """
    entries, first = _palette_range(ds)
    if "RedPaletteColorLookupTableData" not in ds:
        rgb = apply_color_lut(pixels, ds)[..., :3]  # segmented (or none: ValueError)
        top = int(apply_color_lut(np.arange(first, first + entries), ds)[..., :3].max())
    else:
        tables = np.stack([_palette_table(ds, colour, entries) for colour in _COLOURS], axis=-1)
        top = int(tables.max()) if tables.size else 0
        index = np.clip(pixels.astype(np.int64) - first, 0, entries - 1)
        rgb = tables[index]
    if rgb.dtype.itemsize > 1 and top > 255:
        rgb = rgb >> 8
    return rgb.astype(np.uint8)


_COLOURS = ("Red", "Green", "Blue")


def _palette_range(ds: pydicom.Dataset) -> tuple[int, int]:
    """(entries, first mapped value) from the red descriptor (PS3.3 C.7.6.3.1.5)."""
    descriptor = [int(v) for v in ds.RedPaletteColorLookupTableDescriptor]
    if len(descriptor) != 3 or descriptor[2] not in (8, 16):
        raise RenderError("The palette's table descriptor is not three values of 8 or 16 bits.")
    return descriptor[0] or 65536, descriptor[1]


def _palette_table(ds: pydicom.Dataset, colour: str, entries: int) -> np.ndarray:
    data = bytes(ds[f"{colour}PaletteColorLookupTableData"].value)
    bits = len(data) * 8 // entries if entries else 0
    if bits not in (8, 16) or len(data) != entries * bits // 8:
        raise RenderError(f"The palette's {colour.lower()} table does not hold its entries.")
    return np.frombuffer(data, dtype=f"{_byte_order(ds)}u{bits // 8}").astype(f"u{bits // 8}")


def _byte_order(ds: pydicom.Dataset) -> str:
    """numpy's byte order mark for the OW values of `ds` (its transfer syntax's)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ">" if syntax is not None and syntax.is_little_endian is False else "<"


def _grey_inputs(ds: pydicom.Dataset) -> dict[str, Any] | None:
    """What the lookup-table path needs from the header, or None if it does not apply."""
    if (
        ds.get("SamplesPerPixel", 1) != 1
        or _is_palette(ds)
        or "ModalityLUTSequence" in ds
        or "VOILUTSequence" in ds
        or str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper() != "LINEAR"
    ):
        return None
    slope, intercept = _rescale(ds)
    window = _file_window(ds)
    return {
        "slope": slope,
        "intercept": intercept,
        "window": list(window) if window is not None else None,
        "inverted": str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
    }


def _through_table(
    pixels: np.ndarray, grey: dict[str, Any], window: tuple[float, float] | None
) -> np.ndarray | None:
    centre_width = window or grey["window"]
    if centre_width is None:
        return None
    centre, width = centre_width
    native = pixels.dtype.newbyteorder("=")
    table = _grey_table(
        native.str, grey["slope"], grey["intercept"], float(centre), float(width), grey["inverted"]
    )
    index = np.ascontiguousarray(pixels, dtype=native).view(f"u{native.itemsize}")
    return table[index]  # np.take would first copy the index as 64-bit integers


def _first_item(ds: pydicom.Dataset, keyword: str) -> pydicom.Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if isinstance(sequence, pydicom.Sequence) and len(sequence) else None


def _lut(ds: pydicom.Dataset, item: pydicom.Dataset) -> tuple[np.ndarray, int, int]:
    """(entries, first value mapped, bits) of a Modality or VOI LUT item (PS3.3
    C.11.1.1.1, C.11.2.1.1): read here, with 64-bit indices. pydicom 3.0 indexes an
    8-bit table through its own type (more than 256 entries wrap) and refuses entries
    of other than 8 or 16 bits."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, TypeError, ValueError):
        raise RenderError("A lookup table's descriptor is not three numbers.") from None
    entries = entries or 65536
    if not 1 <= bits <= 16:
        raise RenderError(f"A lookup table has {bits}-bit entries (1 to 16 are defined).")
    if first >= 32768 and ds.get("PixelRepresentation", 0) == 1:
        first -= 65536  # the first value mapped is signed when the pixels are (US or SS)
    if isinstance(data, bytes | bytearray):  # OW: 16-bit words, or 8-bit bytes packed
        width = 1 if bits <= 8 and len(data) == entries else 2
        table = np.frombuffer(bytes(data)[: entries * width], dtype=f"{_byte_order(ds)}u{width}")
    else:  # US: a number or a list of them
        values = data if isinstance(data, list | pydicom.multival.MultiValue) else [data]
        table = np.array([int(v) for v in values], dtype=np.int64)
    if len(table) != entries:
        raise RenderError("A lookup table does not hold the entries its descriptor says.")
    return table.astype(np.int64), first, bits


def _looked_up(table: np.ndarray, first: int, values: np.ndarray) -> np.ndarray:
    """`values` through `table`: those below its first value take its first entry, those
    past its end its last (PS3.3 C.11.1.1.1)."""
    index = np.floor(values).astype(np.int64) if values.dtype.kind == "f" else values
    return table[np.clip(index.astype(np.int64) - first, 0, len(table) - 1)]


def _modality_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values through the modality LUT (PS3.3 C.11.1): its table, else the rescale."""
    item = _first_item(ds, "ModalityLUTSequence")
    if item is not None:
        table, first, _ = _lut(ds, item)
        return _looked_up(table, first, stored).astype(np.float64)
    slope, intercept = _rescale(ds)
    return stored.astype(np.float64) * slope + intercept


def _sigmoid_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w))."""
    exponent = np.clip(-4.0 * (values - centre) / width, -700.0, 700.0)
    return np.rint(255.0 / (1.0 + np.exp(exponent))).astype(np.uint8)


def _exact_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2 (LINEAR_EXACT): ((x - c) / w + 0.5), clipped to the range."""
    return np.clip(np.rint(((values - centre) / width + 0.5) * 255.0), 0, 255).astype(np.uint8)


def _voi_grey(
    ds: pydicom.Dataset, values: np.ndarray, window: tuple[float, float] | None
) -> np.ndarray | None:
    """Modality values to grey levels 0-255 (PS3.3 C.11.2), in the output range the VOI
    defines, never stretched to the frame's own: `window` (LINEAR) when asked for, else
    the file's first window through its VOI LUT function, else its first VOI LUT, else
    the modality's default window. None when there is none of them."""
    if window is not None:
        return _linear_window(values, *window)
    centre, width = _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function == "SIGMOID":
            return _sigmoid_window(values, centre, width)
        if function == "LINEAR_EXACT":
            return _exact_window(values, centre, width)
        return _linear_window(values, centre, width)
    item = _first_item(ds, "VOILUTSequence")
    if item is not None:
        table, first, bits = _lut(ds, item)
        top = int(table.max()) if table.size else 0
        # Some writers put 8-bit values in entries said to be 16 bits (as palettes).
        bits = 8 if bits > 8 and top <= 255 else bits
        grey = _looked_up(table, first, values) * (255.0 / ((1 << bits) - 1))
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    default = MODALITY_WINDOWS.get(str(ds.get("Modality", "")))
    return _linear_window(values, *default) if default else None


def _grey(
    ds: pydicom.Dataset, pixels: np.ndarray, window: tuple[float, float] | None = None
) -> np.ndarray:
    """One grey frame through the modality LUT, the VOI and MONOCHROME1's inversion.

    Integer frames of up to 16 bits go through a table of every value their type holds,
    so only the 8-bit result is allocated whatever the LUTs and the VOI function; other
    frames are mapped pixel by pixel. A frame with no window anywhere is stretched.
    """
    inverted = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        native = pixels.dtype.newbyteorder("=")
        unsigned = f"u{native.itemsize}"
        codes = np.arange(1 << (8 * native.itemsize), dtype=unsigned).view(native)
        table = _voi_grey(ds, _modality_values(ds, codes), window)
        if table is not None:
            table = 255 - table if inverted else table
            return table[np.ascontiguousarray(pixels, dtype=native).view(unsigned)]
    else:
        grey = _voi_grey(ds, _modality_values(ds, pixels), window)
        if grey is not None:
            return 255 - grey if inverted else grey
    if "ModalityLUTSequence" in ds:
        grey = _to_uint8(_modality_values(ds, pixels))
    else:  # rescaled inside the stretch's table: no float copy
        grey = _to_uint8(pixels, *_rescale(ds))
    return 255 - grey if inverted else grey


def frame_to_uint8(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """One frame as 8-bit grey or RGB, windowed and with MONOCHROME1 inverted."""
    fast = windowed_by_table(ds, pixels)
    if fast is not None:
        return fast
    if _is_palette(ds):
        return _palette_rgb(ds, pixels)
    if ds.get("SamplesPerPixel", 1) > 1:
        # Colour frames come from pydicom, which returns YBR_FULL and YBR_FULL_422 as RGB
        # already, stored compressed or not; converting again shifts every colour.
        if pixels.dtype != np.uint8:
            pixels = _to_uint8(pixels)
        return pixels
    return _grey(ds, pixels)


def thumbnail_png(data: bytes, *, max_size: int = 256) -> bytes:
    """A PNG of the middle frame of one instance, at most `max_size` pixels wide or high."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        _frame_size_check(ds)  # native frames too: rendering takes many times their size
        number = frame_count(ds) // 2 + 1
        pixels = frame_pixels(ds, number)
        image = Image.fromarray(frame_to_uint8(frame_header(ds, number), pixels))
    except RenderError:
        raise
    except Exception as exc:  # codecs raise many kinds of errors on bad data
        raise RenderError(f"{type(exc).__name__}: {exc}"[:200]) from None
    image.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def frame_count(ds: pydicom.Dataset) -> int:
    """Number of Frames; 1 where it is absent or not a whole number (as ingest records)."""
    frames = _number(ds.get("NumberOfFrames"), 1.0) or 1.0
    return int(frames) if frames.is_integer() and frames >= 1 else 1


# Uncompressed little-endian transfer syntaxes, whose frames are read straight from the
# pixel data (deflate and big endian go through pydicom).
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _native_format(ds: pydicom.Dataset) -> tuple[np.dtype, int, int, int] | None:
    """(dtype, rows, columns, bits stored) of uncompressed one-sample 8- or 16-bit pixel
    data whose value holds every frame; None otherwise (pydicom decodes those)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    allocated, stored = ds.get("BitsAllocated"), ds.get("BitsStored")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    signed = ds.get("PixelRepresentation")
    if (
        syntax not in _NATIVE_LITTLE_ENDIAN
        or "PixelData" not in ds
        or ds.get("SamplesPerPixel", 1) != 1
        or allocated not in (8, 16)
        or not isinstance(stored, int)
        or not 1 <= stored <= allocated
        or signed not in (0, 1)
        or not rows
        or not columns
    ):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    data = ds.PixelData
    if not isinstance(data, bytes) or len(data) < frame_count(ds) * rows * columns * dtype.itemsize:
        return None  # pydicom says what is wrong
    return dtype, rows, columns, stored


def _frame_at(
    buffer: bytes, *, offset: int, dtype: np.dtype, rows: int, columns: int, stored: int
) -> np.ndarray:
    pixels = np.frombuffer(buffer, dtype=dtype, count=rows * columns, offset=offset)
    pixels = pixels.reshape(rows, columns)
    allocated = dtype.itemsize * 8
    if stored < allocated:
        shift = allocated - stored
        pixels = (pixels << shift) >> shift  # arithmetic for signed: the sign extends
    return pixels


def _native_frame(ds: pydicom.Dataset, number: int) -> np.ndarray | None:
    """Frame `number` of uncompressed one-sample 8- or 16-bit data, or None otherwise.

    The same values as pydicom's `pixel_array` (unused high bits cleared, or the sign
    extended from Bits Stored), without its general decoding machinery, and only the
    frame asked for: for one 512x512 frame, 0.02 ms instead of 0.2; for frame 50 of a
    multi-frame instance, one frame's work instead of every frame's.
    """
    native = _native_format(ds)
    if native is None:
        return None
    dtype, rows, columns, stored = native
    offset = (number - 1) * rows * columns * dtype.itemsize
    return _frame_at(
        ds.PixelData, offset=offset, dtype=dtype, rows=rows, columns=columns, stored=stored
    )


def frame_number_check(number: int, *, frames: int) -> None:
    """Raise NoSuchFrame unless frame `number` is one of `frames`."""
    if not 1 <= number <= frames:
        raise NoSuchFrame(f"frame {number} does not exist (the instance has {frames})")


def frame_pixels(ds: pydicom.Dataset, number: int) -> np.ndarray:
    """Frame `number` (1-based) as decoded pixels; only that frame is decoded."""
    return next(_frames_pixels(ds, [number]))


def frame_native_bytes(ds: pydicom.Dataset, number: int) -> bytes:
    """A frame as uncompressed little-endian pixel bytes (application/octet-stream)."""
    return _little_endian_bytes(frame_pixels(ds, number))


def max_frame_bytes() -> int:
    """The most bytes one decoded frame may take (`RENDER_MAX_FRAME_BYTES`).

    Compressed pixel data can claim any size in its header (65535 x 65535 x 3 samples of
    16 bits is 24 GiB, from a few bytes of stored data), and the decoders allocate what
    the header claims before decoding anything; a larger frame is refused instead. The
    largest real single frames (mammography, large secondary captures) are a few tens of
    MiB.
    """
    return settings.RENDER_MAX_FRAME_BYTES


def decoded_frame_bytes(ds: pydicom.Dataset) -> int | None:
    """Bytes one frame takes decoded: Rows x Columns x Samples per Pixel x the bytes of
    the type pydicom decodes a sample to; None if the header does not say (pydicom then
    says what is wrong)."""
    rows, columns = _number(ds.get("Rows")), _number(ds.get("Columns"))
    samples = _number(ds.get("SamplesPerPixel"), 1.0)
    allocated = _number(ds.get("BitsAllocated"))
    if rows is None or columns is None or samples is None or allocated is None:
        return None
    # 1-bit data is unpacked to a byte per pixel; 24 bits go to 32, 40 to 64.
    itemsize = next((size for size in (1, 2, 4, 8) if allocated <= size * 8), None)
    if itemsize is None:
        return None
    return max(int(rows), 0) * max(int(columns), 0) * max(int(samples), 1) * itemsize


def _frames_pixels(ds: pydicom.Dataset, numbers: list[int]) -> Iterator[np.ndarray]:
    """Frames `numbers` (1-based), each checked first, decoded one after another."""
    frames = frame_count(ds)
    for number in numbers:
        frame_number_check(number, frames=frames)
    if _native_format(ds) is not None:
        return (_native_frame(ds, number) for number in numbers)  # type: ignore[misc]
    return _decoded_frames(ds, numbers)


def _decoded_frames(ds: pydicom.Dataset, numbers: list[int]) -> Iterator[np.ndarray]:
    """Frames `numbers` decoded by pydicom, only those: never every frame of the
    instance for one of them (a 2,000-frame compressed cine is gigabytes decoded).

    Raises FrameTooLarge, before anything is decoded, for a frame larger than
    `max_frame_bytes()`.
    """
    _frame_size_check(ds)
    return _decoding(ds, numbers)


def _frame_size_check(ds: pydicom.Dataset) -> None:
    size, limit = decoded_frame_bytes(ds), max_frame_bytes()
    if size is not None and size > limit:
        raise FrameTooLarge(
            f"A frame of this instance decodes to {size:,} bytes, more than the "
            f"{limit:,} bytes a frame may take; it is not decoded."
        )


def _decoding(ds: pydicom.Dataset, numbers: list[int]) -> Iterator[np.ndarray]:
    try:
        if _encapsulated(ds) and len(numbers) > 1:
            yield from _encapsulated_frames(ds, numbers)
        else:
            for number in numbers:
                yield _pydicom_frame(ds, number - 1)
    except RenderError:
        raise
    except Exception as exc:  # codecs raise many kinds of errors on bad data
        raise RenderError(f"{type(exc).__name__}: {exc}"[:200]) from None


def _pydicom_frame(ds: pydicom.Dataset, index: int) -> np.ndarray:
    """Frame `index` (0-based) by the dataset's own decoding, set to that frame only.

    pydicom finds one frame of encapsulated data by the Basic or Extended Offset Table,
    or without one by walking the fragments (one or several a frame), and decodes only
    it; native data is sliced.
    """
    ds.pixel_array_options(index=index)
    try:
        return ds.pixel_array
    finally:
        ds.pixel_array_options()  # whole-object decoding again, and no frame kept on `ds`


def _encapsulated(ds: pydicom.Dataset) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return syntax is not None and UID(str(syntax)).is_encapsulated


def _encapsulated_frames(ds: pydicom.Dataset, numbers: list[int]) -> Iterator[np.ndarray]:
    """Several frames of encapsulated pixel data, split from it in one pass.

    Without an offset table pydicom finds a frame by walking the fragments from the
    first; asked once a frame, for all 2,000 frames of a cine, that walk would be
    quadratic in the instance's size. Each frame found is then decoded as a one-frame
    object with the instance's pixel description, as `pixel_array` decodes it.
    """
    options = as_pixel_options(ds)
    wanted, last = {number - 1 for number in numbers}, max(numbers) - 1
    encoded: dict[int, bytes] = {}
    split = generate_frames(
        ds.PixelData,
        number_of_frames=options["number_of_frames"],
        extended_offsets=options.pop("extended_offsets", None),
    )
    for index, frame in enumerate(split):
        if index in wanted:
            encoded[index] = frame
        if index >= last:
            break
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    options["number_of_frames"] = 1
    for number in numbers:
        if number - 1 not in encoded:
            raise RenderError(f"The pixel data holds no frame {number}.")
        yield decoder.as_array(encapsulate([encoded[number - 1]]), index=0, **options)[0]


def pixel_data_native_bytes(ds: pydicom.Dataset) -> bytes:
    """Every frame as `frame_native_bytes` gives it, one after another, decoded once."""
    frames = frame_count(ds)
    if _native_frame(ds, 1) is not None:
        return b"".join(frame_native_bytes(ds, n) for n in range(1, frames + 1))
    _frame_size_check(ds)  # a frame refused on its own is refused among the others
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}"[:200]) from None
    return _little_endian_bytes(pixels)


def rendered(
    ds: pydicom.Dataset,
    *,
    number: int = 1,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: Viewport | None = None,
    quality: int = 90,
) -> bytes:
    """One frame rendered for display (PS3.18 rendered resources)."""
    try:
        return _rendered(ds, number, media_type, window, viewport, quality)
    except RenderError:
        raise
    except Exception as exc:  # odd headers fail deep in numpy or Pillow in many shapes
        raise RenderError(f"The frame could not be rendered ({type(exc).__name__}).") from None


def _rendered(
    ds: pydicom.Dataset,
    number: int,
    media_type: str,
    window: tuple[float, float] | None,
    viewport: Viewport | None,
    quality: int,
) -> bytes:
    # Native frames are only sliced, not decoded, but rendering one takes many times its
    # size (float copies, percentiles): the decoded frames' cap holds for them here.
    _frame_size_check(ds)
    pixels = frame_pixels(ds, number)
    header = frame_header(ds, number)
    grey = windowed_by_table(header, pixels, window) if window is not None else None
    if grey is not None:
        image = Image.fromarray(grey)
    elif window is not None and ds.get("SamplesPerPixel", 1) == 1 and not _is_palette(ds):
        # A window applies to grey levels; colour (palette colour too) keeps its own.
        image = Image.fromarray(_grey(header, pixels, window))
    else:
        image = Image.fromarray(frame_to_uint8(header, pixels))
    return _encoded(image, media_type, viewport, quality)


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3 viewport=vw,vh[,sx,sy,sw,sh]: the region of the image (sx, sy,
    |sw| by |sh|; a negative size flips that way), scaled to fit vw by vh. `enlarge`
    False only shrinks (a thumbnail's default size)."""

    width: int
    height: int
    region: tuple[int, int, int | None, int | None] | None = None
    enlarge: bool = True

    def applied(self, image: Image.Image) -> Image.Image:
        if self.region is not None:
            image = self._cropped(image)
        scale = min(self.width / image.width, self.height / image.height)
        if scale >= 1 and not self.enlarge:
            return image
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)

    def _cropped(self, image: Image.Image) -> Image.Image:
        x, y, width, height = self.region  # type: ignore[misc]
        width = image.width - x if width is None else width
        height = image.height - y if height is None else height
        box = (
            max(0, min(x, x + width)),
            max(0, min(y, y + height)),
            min(image.width, max(x, x + width)),
            min(image.height, max(y, y + height)),
        )
        if box[0] >= box[2] or box[1] >= box[3]:
            raise RenderError("The viewport's source region lies outside the image.")
        image = image.crop(box)
        if width < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if height < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return image


def _encoded(image: Image.Image, media_type: str, viewport: Viewport | None, quality: int) -> bytes:
    if viewport is not None:
        image = viewport.applied(image)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=quality
        )
    return buffer.getvalue()


# --- Pixel layouts: frames read without parsing the file again -------------------------
#
# Ingest parses every file; for uncompressed one-sample pixel data it also records where
# the pixel data starts and what rendering it needs (`pixel_layout`, kept on the
# instance's row). Frames and rendered frames of such instances then come straight from
# the verified plaintext: no pydicom parse, which was a third of a rendered frame's CPU.
# The layout holds no PHI (sizes, bit depths, rescale and window). Rows without one (null:
# stored before layouts were kept; no offset: pixel data pydicom must decode; another
# version: recorded by other rendering rules) take the parsing path, as does any layout
# whose Pixel Data element is not where it says in the bytes it is given.

# Raised whenever what a layout records, or what the rendering does with it, changes:
# older layouts are then not used, and the headers backfill records them again.
PIXEL_LAYOUT_VERSION = 2  # 2: enhanced objects' functional groups
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def pixel_value_offset(ds: pydicom.Dataset) -> int | None:
    """Where the top-level Pixel Data value starts in the bytes `ds` was read from.

    Call it straight after reading, before anything reads the value: pydicom keeps the
    raw element, with its position, only until then. None if there is no such value.
    """
    raw = ds.get_item(0x7FE00010)
    return getattr(raw, "value_tell", None) if raw is not None else None


def pixel_layout(ds: pydicom.Dataset, *, data: bytes, offset: int | None) -> dict[str, Any]:
    """How to read `data`'s frames without parsing it (no "offset" where pydicom must
    decode them).

    `offset` is `pixel_value_offset(ds)`; the value found there must be the one pydicom
    read, or no layout is recorded.
    """
    none = {"v": PIXEL_LAYOUT_VERSION}
    native = _native_format(ds)
    if native is None or offset is None:
        return none
    dtype, rows, columns, stored = native
    value = ds.PixelData
    # startswith: a memcmp in place (comparing a memoryview went item by item, 0.5 ms).
    if not data.startswith(value, offset) or not _element_at(data, offset, len(value)):
        return none
    photometric = str(ds.get("PhotometricInterpretation", ""))
    return {
        **none,
        "offset": offset,
        "length": len(value),
        "dtype": dtype.str,
        "rows": rows,
        "columns": columns,
        "stored": stored,
        "frames": frame_count(ds),
        # Palette colour and the like keep the parsing path's rules, whatever they become,
        # as do frames with a rescale or window of their own: one table serves them all.
        "grey": (
            _grey_inputs(frame_header(ds, 1))
            if photometric in ("MONOCHROME1", "MONOCHROME2") and not _display_varies_by_frame(ds)
            else None
        ),
    }


def pixel_layout_current(layout: Any) -> bool:
    """Whether `layout` was recorded by this version's rules (else it is recorded again)."""
    return isinstance(layout, dict) and layout.get("v") == PIXEL_LAYOUT_VERSION


def _element_at(data: bytes, offset: int, length: int) -> bool:
    """Whether a Pixel Data element of `length` bytes has its value at `offset`: its tag
    and length just before it, explicit VR (12 bytes) or implicit (8)."""
    if offset < 8 or offset + length > len(data):
        return False
    if data[offset - 4 : offset] != length.to_bytes(4, "little"):
        return False
    return data[offset - 8 : offset - 4] == _PIXEL_DATA_TAG or (
        offset >= 12 and data[offset - 12 : offset - 8] == _PIXEL_DATA_TAG
    )


_LAYOUT_DTYPES = {"<u1", "|u1", "<i1", "|i1", "<u2", "<i2"}


def _layout_frame(data: bytes, layout: Any, number: int) -> np.ndarray | None:
    """Frame `number` as `_native_frame` gives it, read at the layout's offset; None if
    there is no current layout or it does not fit `data`."""
    if not pixel_layout_current(layout) or "offset" not in layout:
        return None
    try:
        offset, length = int(layout["offset"]), int(layout["length"])
        rows, columns = int(layout["rows"]), int(layout["columns"])
        frames, stored, kind = int(layout["frames"]), int(layout["stored"]), layout["dtype"]
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if kind not in _LAYOUT_DTYPES or min(rows, columns, frames) < 1:
        return None
    dtype = np.dtype(kind)
    size = rows * columns * dtype.itemsize
    if not 1 <= stored <= dtype.itemsize * 8 or frames * size > length:
        return None
    if not _element_at(data, offset, length):
        return None
    frame_number_check(number, frames=frames)
    return _frame_at(
        data,
        offset=offset + (number - 1) * size,
        dtype=dtype,
        rows=rows,
        columns=columns,
        stored=stored,
    )


class FramesTooLarge(RenderError):
    """The frames asked for together decode to more than a request may hold."""


def frames_native_bytes(
    data: bytes,
    *,
    layout: dict[str, Any] | None,
    numbers: list[int],
    max_bytes: int | None = None,
) -> list[bytes]:
    """Frames of a Part 10 file as `frame_native_bytes` gives them, by the layout where
    there is one; FramesTooLarge once they pass `max_bytes` together.

    Frames are decoded one after another and counted as they come: a small compressed
    object (RLE of flat frames, JPEG-LS runs) can decode to gigabytes.
    """
    frames: Iterable[np.ndarray | None] | None = None
    if layout is not None and max_bytes is not None and "offset" in layout:
        # Refused before any frame is copied (a shifted copy each, for Bits Stored below
        # Bits Allocated): the layout gives every frame's size.
        try:
            frame_bytes = layout["rows"] * layout["columns"] * np.dtype(layout["dtype"]).itemsize
        except (KeyError, TypeError):
            frame_bytes = 0
        if len(numbers) * frame_bytes > max_bytes:
            raise FramesTooLarge(
                f"The frames asked for decode to more than {max_bytes:,} bytes together; "
                "ask for fewer frames at a time."
            )
    if layout is not None:
        frames = [_layout_frame(data, layout, n) for n in numbers]
        if not all(frame is not None for frame in frames):
            frames = None
    if frames is None:
        frames = _frames_pixels(pydicom.dcmread(io.BytesIO(data)), numbers)
    out, total = [], 0
    for pixels in frames:
        total += pixels.nbytes  # type: ignore[union-attr]
        if max_bytes is not None and total > max_bytes:
            raise FramesTooLarge(
                f"The frames asked for decode to more than {max_bytes:,} bytes together; "
                "ask for fewer frames at a time."
            )
        out.append(_little_endian_bytes(pixels))  # type: ignore[arg-type]
    return out


def _little_endian_bytes(pixels: np.ndarray) -> bytes:
    return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def rendered_file(
    data: bytes,
    *,
    layout: dict[str, Any] | None,
    number: int = 1,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: Viewport | None = None,
    quality: int = 90,
) -> bytes:
    """`rendered` for a Part 10 file, by its layout where the layout covers the frame."""
    pixels = _layout_frame(data, layout, number)
    grey = None
    if pixels is not None and layout.get("grey"):  # type: ignore[union-attr]
        try:
            grey = _through_table(pixels, layout["grey"], window)  # type: ignore[index]
        except (KeyError, TypeError, ValueError, OverflowError):  # odd: parse the file
            grey = None
    if grey is not None:
        try:
            return _encoded(Image.fromarray(grey), media_type, viewport, quality)
        except Exception as exc:  # as `rendered` says it (a JPEG wider than 65,500...)
            raise RenderError(f"The frame could not be rendered ({type(exc).__name__}).") from None
    return rendered(
        pydicom.dcmread(io.BytesIO(data)),
        number=number,
        media_type=media_type,
        window=window,
        viewport=viewport,
        quality=quality,
    )
