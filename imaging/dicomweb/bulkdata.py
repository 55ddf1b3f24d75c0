"""Bulk data (PS3.18 8.6.1.2.3): the values metadata gives as a BulkDataURI. pydicom only.

Metadata names a value by its path from the instance's top level: a tag, or tags and
0-based item indexes through sequences (`00540016/0/00181072`), under the instance's
`bulkdata/`. The path is kept in the stored header JSON relative to the instance
(`bulkdata/<path>`) and made absolute when metadata is served, so it survives a
change of host.
"""

from __future__ import annotations

import io
import re
from struct import error as struct_error

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.encaps import get_frame
from pydicom.uid import UID

from imaging.dicom import PIXEL_DATA
from imaging.render import RenderError, frame_count, frame_number_check, pixel_data_native_bytes

_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,16}")
# Decoded pixel data is built in memory: larger answers are refused, and /frames serves
# such an instance a frame at a time.
MAX_DECODED_BYTES = 256 << 20
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"}
# Word sizes of the binary VRs whose values pydicom keeps as the file's bytes.
WORDS = {"OW": "u2", "OL": "u4", "OF": "u4", "OD": "u8", "OV": "u8"}


class NoSuchAttribute(RenderError):
    pass


def bulk_path_valid(path: str) -> bool:
    return _PATH.fullmatch(path) is not None


def little_endian(element: DataElement, *, big_endian: bool) -> bytes:
    """A binary value's bytes as explicit VR little endian holds them."""
    word = WORDS.get(element.VR)
    if not big_endian or word is None:
        return bytes(element.value)
    return _swapped(element.value, word=word)


def _swapped(value: bytes, *, word: str) -> bytes:
    """Big endian words of numpy type `word` ("u2", "u4", ...) as little endian."""
    return np.frombuffer(value, dtype=">" + word).astype("<" + word).tobytes()


def stored_pixel_bytes(ds: pydicom.Dataset) -> bytes:
    """Uncompressed pixel data as explicit VR little endian holds it, bit for bit.

    Big endian OW pixel data is swapped a pixel at a time for 32- and 64-bit pixels and
    a 16-bit word at a time otherwise (8- and 1-bit data included), as pydicom reads it
    (and its reference big endian files are written); OB is never swapped.
    """
    element = ds["PixelData"]
    if ds.original_encoding[1] is not False or element.VR != "OW":
        return bytes(element.value)
    size = max(int(ds.get("BitsAllocated") or 16), 16) // 8
    return _swapped(element.value, word=f"u{size}" if size in (2, 4, 8) else "u2")


def _element(ds: pydicom.Dataset, path: str) -> DataElement:
    steps = path.split("/")
    current = ds
    for position in range(0, len(steps), 2):
        tag = int(steps[position], 16)
        if tag not in current:
            raise NoSuchAttribute("The instance has no value at that bulk data path.")
        element = current[tag]
        if position + 1 == len(steps):
            return element
        index = int(steps[position + 1])
        if element.VR != "SQ" or index >= len(element.value):
            raise NoSuchAttribute("The instance has no value at that bulk data path.")
        current = element.value[index]
    raise NoSuchAttribute("The instance has no value at that bulk data path.")


def _decoded_size(ds: pydicom.Dataset) -> int:
    try:
        samples = int(ds.get("SamplesPerPixel") or 1)
        allocated = max(int(ds.get("BitsAllocated") or 8), 8)
        return int(ds.Rows) * int(ds.Columns) * frame_count(ds) * samples * allocated // 8
    except (AttributeError, TypeError, ValueError):
        return 0  # the decoder says what is wrong


def bulk_data_bytes(ds: pydicom.Dataset, *, path: str) -> bytes:
    """The value at `path` as application/octet-stream: little endian, uncompressed.

    A binary value is its stored bytes as explicit VR little endian holds them, pixel
    data stored uncompressed included (bit for bit: unused high bits, 1-bit packing and
    planar order as stored). Compressed pixel data is every frame decoded to native
    little-endian pixels, as the frames resource serves them.
    """
    big_endian = ds.original_encoding[1] is False
    if path.upper() == PIXEL_DATA:
        if "PixelData" not in ds:
            raise NoSuchAttribute("The instance has no pixel data.")
        if not _encapsulated(ds):
            return stored_pixel_bytes(ds)
        if _decoded_size(ds) > MAX_DECODED_BYTES:
            raise RenderError("The pixel data is too large to send at once; ask for its frames.")
        return pixel_data_native_bytes(ds)
    element = _element(ds, path)
    if element.VR not in _BINARY_VRS or element.is_empty:
        raise NoSuchAttribute("That attribute is not bulk data; it is in the metadata.")
    return little_endian(element, big_endian=big_endian)


def _encapsulated(ds: pydicom.Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return syntax is not None and UID(str(syntax)).is_encapsulated
    except ValueError:  # not a transfer syntax pydicom knows: its decoder says what is wrong
        return True


def stored_frames(data: bytes, *, numbers: list[int], transfer_syntax: str) -> list[bytes]:
    """Frames `numbers` (from 1) of a Part 10 file's encapsulated pixel data as stored:
    each frame's fragments joined, nothing decoded.

    Frames are found through the Extended Offset Table where there is one, else the
    Basic Offset Table, else one fragment a frame (or JPEG markers, as pydicom does).
    """
    ds = pydicom.dcmread(io.BytesIO(data))
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) != transfer_syntax:
        raise RenderError("The stored object is not in the transfer syntax its row records.")
    if "PixelData" not in ds:
        raise NoSuchAttribute("The instance has no pixel data.")
    frames = frame_count(ds)
    for number in numbers:
        frame_number_check(number, frames=frames)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return [
            get_frame(ds.PixelData, number - 1, number_of_frames=frames, extended_offsets=extended)
            for number in numbers
        ]
    except (ValueError, IndexError, KeyError, EOFError, struct_error) as exc:
        raise RenderError(
            f"The frame's compressed data could not be found ({type(exc).__name__})."
        ) from None
