"""The byte layout of an untrusted data set, checked before pydicom parses it. No ORM.

pydicom builds an object for every element and sequence item as it reads, undefined-
length sequences included, so a few megabytes of empty elements (or a deflated file a
few kilobytes long) cost it gigabytes and seconds before any check could run. Walking
the bytes costs a few microseconds an element and holds nothing: elements are counted
against a limit, and an element that appears twice in one data set with different
values is refused, since pydicom keeps the last and other readers the first (two
patients, or two images, in one file). Elements out of ascending order are left to
pydicom, which sorts them. Values pydicom may read as sequences without their saying
so (a UN of a sequence's tag, a private sequence in implicit VR) are walked as items
when they begin like items.

What the walk cannot follow (a length past the end, a tag where an item should be) is
left for the full parse to name: it stops, it does not guess.
"""

from __future__ import annotations

import contextlib
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
    def __init__(self, data: bytes, *, max_elements: int, max_depth: int) -> None:
        self.data = data
        self.max_elements = max_elements
        self.max_depth = max_depth
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

    def starts_item(self, at: int, *, little: bool) -> bool:
        return self.data[at : at + 4] == (b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00")

    def data_set(
        self,
        at: int,
        end: int | None,
        *,
        implicit: bool,
        little: bool,
        depth: int = 0,
        guessed: bool = False,
    ) -> int:
        """Walk one data set from `at` to `end`, or to its item delimiter when `end` is
        None (an item of undefined length); the offset after it. `guessed`: a value
        walked as items because pydicom may read it so, not because it says it is."""
        if depth > self.max_depth:
            raise LayoutRefused(
                "nesting_too_deep", f"Sequences are nested deeper than {self.max_depth} levels."
            )
        order = "<" if little else ">"
        seen: dict[int, tuple[bytes, int, int]] = {}  # tag: (VR, value offset, length)
        while end is None or at < end:
            group, element = self.unpack(order + "HH", at)
            tag = group << 16 | element
            if tag == ITEM_END:
                if end is not None:
                    raise _Stop
                return at + 8
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
            # Group 0000 is never in a data set; zeros padding a file read as its tags.
            if tag in seen and group and not guessed and not self.same(seen[tag], vr, at, length):
                raise LayoutRefused(
                    "malformed",
                    f"Element ({group:04X},{element:04X}) appears twice in one data set with "
                    "different values; readers disagree about which one holds (DICOM allows "
                    "each once).",
                )
            seen[tag] = (vr, at, length)
            self.count()
            at = self.value(
                at, tag, vr, length, implicit=implicit, little=little, depth=depth, guessed=guessed
            )
            if at > len(self.data):
                raise _Stop
        return at

    def same(self, first: tuple[bytes, int, int], vr: bytes, at: int, length: int) -> bool:
        """Whether a repeated element is byte for byte the first (readers agree then)."""
        first_vr, first_at, first_length = first
        if length == UNDEFINED_LENGTH or (first_vr, first_length) != (vr, length):
            return False
        return self.data[first_at : first_at + length] == self.data[at : at + length]

    def value(
        self,
        at: int,
        tag: int,
        vr: bytes,
        length: int,
        *,
        implicit: bool,
        little: bool,
        depth: int,
        guessed: bool,
    ) -> int:
        """Walk or skip the value at `at`; the offset after it."""
        nested = {"little": little, "depth": depth + 1, "guessed": guessed}
        if length == UNDEFINED_LENGTH:
            if tag in PIXEL_DATA_TAGS:
                return self.fragments(at, little=little)
            if vr == b"SQ" or vr == b"UN" or implicit:
                # An undefined-length UN holds implicit VR little endian (PS3.5 6.2.2).
                return self.items(at, None, implicit=implicit or vr == b"UN", **nested)
            return self.fragments(at, little=little)
        if vr == b"SQ" or (implicit and _sequence_vr(tag)):
            return self.items(at, at + length, implicit=implicit, **nested)
        if (vr == b"UN" or implicit) and self.starts_item(at, little=little or vr == b"UN"):
            # pydicom reads a UN of a sequence's tag, and a private sequence its private
            # dictionary knows, as a sequence: walked as one too, if it can be.
            guess = {**nested, "little": little or vr == b"UN", "guessed": True}
            with contextlib.suppress(_Stop):  # not items after all: bytes
                self.items(at, at + length, implicit=True if vr == b"UN" else implicit, **guess)
        return at + length

    def items(
        self,
        at: int,
        end: int | None,
        *,
        implicit: bool,
        little: bool,
        depth: int,
        guessed: bool,
    ) -> int:
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
            item = {"implicit": implicit, "little": little, "depth": depth, "guessed": guessed}
            if length == UNDEFINED_LENGTH:
                at = self.data_set(at, None, **item)
            else:
                self.data_set(at, at + length, **item)
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
    data: bytes,
    *,
    offset: int,
    transfer_syntax: str,
    max_elements: int,
    max_depth: int,
    max_inflated: int,
) -> None:
    """Raise LayoutRefused if the data set from `offset` is not encoded in the VR form
    its transfer syntax names, holds more than `max_elements` elements and items, nests
    deeper than `max_depth`, or holds an element twice with different values."""
    if transfer_syntax == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data[offset:], max_inflated)
        except zlib.error:
            return  # named by the parse
        offset = 0
    implicit = transfer_syntax == IMPLICIT_VR_LE
    if offset + 6 <= len(data) and (data[offset + 4 : offset + 6] in _VRS) == implicit:
        # pydicom would read on in the other form (and warn); the file would then be
        # served under a transfer syntax that other readers take at its word.
        raise LayoutRefused(
            "malformed",
            "The data set is not encoded as its transfer syntax says (explicit or implicit "
            "VR). Write the file again with a DICOM toolkit and send it again.",
        )
    walk = _Walk(data, max_elements=max_elements, max_depth=max_depth)
    try:
        walk.data_set(
            offset, len(data), implicit=implicit, little=transfer_syntax != EXPLICIT_VR_BE
        )
    except _Stop:
        return
