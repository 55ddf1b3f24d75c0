"""The byte layout of an untrusted data set, checked before pydicom parses it. No ORM.

pydicom builds an object for every element and sequence item as it reads, undefined-
length sequences included, so a few megabytes of empty elements (or a deflated file a
few kilobytes long) cost it gigabytes and seconds before any check could run. Walking
the bytes costs a few microseconds an element and holds nothing: elements are counted
against a limit, and an element that appears twice in one data set is refused, since
pydicom keeps the last and other readers the first (two patients, or two images, in
one file). Elements out of ascending order are left to pydicom, which sorts them.

What the walk cannot follow (a length past the end, a tag where an item should be) is
left for the full parse to name: it stops, it does not guess.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_LONG_LENGTH_VRS = frozenset(vr.value.encode() for vr in EXPLICIT_VR_LENGTH_32)


class LayoutRefused(Exception):
    """The data set's layout is refused: `code` for ingest, `message` for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Stop(Exception):
    """The walk cannot follow the bytes any further; the parse decides."""


def _sequence_vr(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private and unknown tags: pydicom reads them as UN
        return False


class _Walk:
    def __init__(self, data: bytes, *, max_elements: int) -> None:
        self.data = data
        self.max_elements = max_elements
        self.elements = 0

    def count(self) -> None:
        self.elements += 1
        if self.elements > self.max_elements:
            raise LayoutRefused(
                "too_complex",
                f"The file holds more than {self.max_elements:,} data elements and sequence "
                "items, more than any image needs.",
            )

    def unpack(self, fmt: str, at: int) -> tuple[int, ...]:
        if at + struct.calcsize(fmt) > len(self.data):
            raise _Stop
        return struct.unpack_from(fmt, self.data, at)

    def data_set(self, at: int, end: int | None, *, implicit: bool, little: bool) -> int:
        """Walk one data set from `at` to `end`, or to its item delimiter when `end` is
        None (an item of undefined length); the offset after it."""
        order = "<" if little else ">"
        seen: set[int] = set()
        while end is None or at < end:
            group, element = self.unpack(order + "HH", at)
            tag = group << 16 | element
            if tag == ITEM_END:
                if end is not None:
                    raise _Stop
                return at + 8
            if tag in seen:
                raise LayoutRefused(
                    "malformed",
                    f"Element ({group:04X},{element:04X}) appears twice in one data set; "
                    "readers disagree about which one holds (DICOM allows each once).",
                )
            seen.add(tag)
            self.count()
            if implicit:
                (length,) = self.unpack(order + "I", at + 4)
                vr = b""
                at += 8
            else:
                vr = self.data[at + 4 : at + 6]
                if vr not in _VRS:
                    raise _Stop  # pydicom reads it as implicit VR, and warns
                if vr in _LONG_LENGTH_VRS:
                    (length,) = self.unpack(order + "I", at + 8)
                    at += 12
                else:
                    (length,) = self.unpack(order + "H", at + 6)
                    at += 8
            sequence = vr == b"SQ" or (implicit and _sequence_vr(tag))
            if length == UNDEFINED_LENGTH:
                if tag in PIXEL_DATA_TAGS:
                    at = self.fragments(at, little=little)
                elif sequence or vr == b"UN" or implicit:
                    # An undefined-length UN holds implicit VR little endian (PS3.5 6.2.2).
                    nested_implicit = implicit or vr == b"UN"
                    at = self.items(at, None, implicit=nested_implicit, little=little)
                else:
                    at = self.fragments(at, little=little)  # encapsulated pixel data
            elif sequence:
                at = self.items(at, at + length, implicit=implicit, little=little)
            else:
                at += length
            if at > len(self.data):
                raise _Stop
        return at

    def items(self, at: int, end: int | None, *, implicit: bool, little: bool) -> int:
        order = "<" if little else ">"
        while end is None or at < end:
            group, element, length = self.unpack(order + "HHI", at)
            tag = group << 16 | element
            at += 8
            if tag == SEQUENCE_END:
                if end is not None:
                    raise _Stop
                return at
            if tag != ITEM:
                raise _Stop
            self.count()
            if length == UNDEFINED_LENGTH:
                at = self.data_set(at, None, implicit=implicit, little=little)
            else:
                self.data_set(at, at + length, implicit=implicit, little=little)
                at += length
        return at

    def fragments(self, at: int, *, little: bool) -> int:
        # Fragments are kept as bytes, not objects: skipped, not counted.
        order = "<" if little else ">"
        while True:
            group, element, length = self.unpack(order + "HHI", at)
            tag = group << 16 | element
            at += 8
            if tag == SEQUENCE_END:
                return at
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise _Stop
            at += length


def layout_check(
    data: bytes, *, offset: int, transfer_syntax: str, max_elements: int, max_inflated: int
) -> None:
    """Raise LayoutRefused if the data set from `offset` holds more than `max_elements`
    elements and items, or an element twice in one data set."""
    if transfer_syntax == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data[offset:], max_inflated)
        except zlib.error:
            return  # named by the parse
        offset = 0
    walk = _Walk(data, max_elements=max_elements)
    try:
        walk.data_set(
            offset,
            len(data),
            implicit=transfer_syntax == IMPLICIT_VR_LE,
            little=transfer_syntax != EXPLICIT_VR_BE,
        )
    except _Stop:
        return
