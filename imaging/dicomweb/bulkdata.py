"""Bulk data (PS3.18 8.6.1.2.3): the values metadata gives as a BulkDataURI. pydicom only.

Metadata names a value by its path from the instance's top level: a tag, or tags and
0-based item indexes through sequences (`00540016/0/00181072`), under the instance's
`bulkdata/`. The path is kept in the stored header JSON relative to the instance
(`bulkdata/<path>`) and made absolute when metadata is served, so it survives a
change of host.
"""

from __future__ import annotations

import bisect
import io
import itertools
import re
import struct
from array import array
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
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


def decoded_size(ds: pydicom.Dataset) -> int:
    """Bytes every frame of the pixel data takes decoded, as its header says."""
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
        if decoded_size(ds) > MAX_DECODED_BYTES:
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

    Frames start where the Extended Offset Table says, else the Basic Offset Table, when
    the table is sound (a start for every frame, the first 0, increasing, each at a
    fragment); else one fragment is one frame, or all of them are the only frame. Tables
    come from the sender: whatever they hold, the answer is the frames or a RenderError.
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
    value = ds.PixelData
    if not isinstance(value, bytes):
        raise RenderError("The pixel data is not encapsulated.")
    fragments = _fragments(value, frames=frames)
    starts = _frame_starts(
        [_extended_offsets(ds, frames=frames), fragments.table],
        fragment_starts=fragments.starts,
        frames=frames,
    )
    count = len(fragments)
    if starts is not None:
        spans = list(itertools.pairwise([*starts, count]))
    elif count == frames:
        spans = [(i, i + 1) for i in range(frames)]
    elif frames == 1:
        spans = [(0, count)]
    elif (spans := _spans_by_markers(fragments, frames=frames, syntax=transfer_syntax)) is None:
        raise RenderError(
            "Where each frame starts among the pixel data's fragments is not recorded; "
            "ask for the frames decoded (application/octet-stream)."
        )
    # Fragments are views into the pixel data: only the frames asked for are copied.
    wanted = [b"".join(fragments[i] for i in range(*spans[number - 1])) for number in numbers]
    if not all(wanted):
        raise RenderError("A frame's compressed data is empty.")
    return wanted


_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)


# The JPEG family's codestreams begin with a start marker (JPEG and JPEG-LS SOI, JPEG
# 2000 and HTJ2K SOC) and end with FFD9 (EOI, or EOC).
_MARKED_SYNTAXES = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000, HTJ2K; not RLE
_STARTS = (b"\xff\xd8", b"\xff\x4f")
_END = b"\xff\xd9"


def _spans_by_markers(
    fragments: _Fragments, *, frames: int, syntax: str
) -> list[tuple[int, int]] | None:
    """Each frame's fragments told apart by its codestream's markers, when nothing
    records where frames start: a frame ends with a fragment ending in the end marker
    (and at most one byte of padding, as fragments have even lengths), and the next
    starts with a start marker. None unless that finds exactly `frames` frames: a
    marker's bytes inside the compressed data must not split a frame."""
    if not syntax.startswith(_MARKED_SYNTAXES):
        return None
    spans, first, count = [], 0, len(fragments)
    for index in range(count):
        chunk = fragments[index]
        if index == first and bytes(chunk[:2]) not in _STARTS:
            return None
        tail = bytes(chunk[-3:])
        following = fragments[index + 1] if index + 1 < count else None
        ends = tail.endswith(_END) or tail[:2] == _END
        if ends and (following is None or bytes(following[:2]) in _STARTS):
            spans.append((first, index + 1))
            first = index + 1
    if first != count or len(spans) != frames:
        return None
    return spans


# Indexing a fragment takes 16 bytes (twice its smallest size in the file) and some
# time: a crafted object of millions of empty fragments is refused rather than indexed.
# Real encoders write one fragment per frame, or a few: this is a slide scan's tiles, or
# 16 GB of 64 KB fragments. Not raised by Number of Frames, which the sender writes.
MAX_FRAGMENTS = 1 << 18


class _Fragments:
    """The encapsulated pixel data's items: its Basic Offset Table, and where each
    fragment's item starts (counted, as offset tables count, from the first fragment's
    item) and its value ends. Fragments are views into the value, made when asked for.
    """

    def __init__(
        self, value: bytes, *, table: list[int], first: int, starts: array, ends: array
    ) -> None:
        self._view = memoryview(value)
        self.table = table
        self._first = first  # where the first fragment's item is in the value
        self.starts = starts
        self._ends = ends

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> memoryview:
        return self._view[self._first + self.starts[index] + 8 : self._ends[index]]


def _fragments(value: bytes, *, frames: int) -> _Fragments:
    """The items of encapsulated pixel data; RenderError if malformed or too many. The
    Basic Offset Table is kept only if it has an entry for each of the `frames`."""
    position, table, first = 0, None, 0
    starts, ends = array("q"), array("q")
    while position + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHL", value, position)
        if (group, element) == _SEQUENCE_END:
            break
        end = position + 8 + length
        if (group, element) != _ITEM or end > len(value):
            raise RenderError("The pixel data's fragments are malformed.")
        if table is None:
            if length % 4:
                raise RenderError("The pixel data's Basic Offset Table is malformed.")
            table = (
                list(struct.unpack_from(f"<{frames}L", value, position + 8))
                if length == 4 * frames
                else []
            )
        else:
            if len(starts) == MAX_FRAGMENTS:
                raise RenderError(
                    f"The pixel data is split into more than {MAX_FRAGMENTS:,} fragments; "
                    "ask for the frames decoded (application/octet-stream)."
                )
            first = first if starts else position
            starts.append(position - first)
            ends.append(end)
        position = end
    if table is None or not starts:
        raise RenderError("The pixel data holds no fragments.")
    return _Fragments(value, table=table, first=first, starts=starts, ends=ends)


def _extended_offsets(ds: pydicom.Dataset, *, frames: int) -> list[int]:
    raw = ds.get("ExtendedOffsetTable")  # of any VR the sender chose
    if not isinstance(raw, bytes) or len(raw) != 8 * frames:
        return []  # not one offset for each frame: of no use
    return list(struct.unpack(f"<{frames}Q", raw))


def _frame_starts(
    tables: list[list[int]], *, fragment_starts: Sequence[int], frames: int
) -> list[int] | None:
    """The index of each frame's first fragment, from the first sound table; None if
    neither is. `fragment_starts` increase, so each entry is looked up by bisection."""

    def fragment_at(start: int) -> int | None:
        i = bisect.bisect_left(fragment_starts, start)
        return i if i < len(fragment_starts) and fragment_starts[i] == start else None

    for table in tables:
        if len(table) != frames or not table or table[0] != 0:
            continue
        if not all(a < b for a, b in itertools.pairwise(table)):
            continue
        found = [i for t in table if (i := fragment_at(t)) is not None]
        if len(found) == frames:
            return found
    return None
