"""DICOM Part 10 validation and metadata extraction. pydicom only, no ORM.

Untrusted input is never read with `force=True`. Cheap checks (size, preamble, the
`DICM` prefix) run before parsing; pydicom tolerates truncated values and lengths
that run past the end of the file, so every element's declared length is checked
against the bytes actually present, and sequence nesting is bounded.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from imaging.deidentify import pixels_may_identify
from imaging.dicom_json import dataset_json
from imaging.dicom_layout import LayoutRefused, layout_check
from imaging.render import pixel_layout, pixel_value_offset

PREAMBLE_BYTES = 128
UNDEFINED_LENGTH = 0xFFFFFFFF
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # fullmatch: no "\n" at the end
EXECUTABLE_SIGNATURES = {
    b"MZ": "Windows executable (MZ)",
    b"\x7fELF": "ELF executable",
    b"\xfe\xed\xfa\xce": "Mach-O executable",
    b"\xfe\xed\xfa\xcf": "Mach-O executable",
    b"\xce\xfa\xed\xfe": "Mach-O executable",
    b"\xcf\xfa\xed\xfe": "Mach-O executable",
    b"\xca\xfe\xba\xbe": "Mach-O universal binary",
    b"#!": "script",
}


# A DICOMDIR: a CD's or folder's index of its files, holding no image of its own.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DICOMDIR_TEXT = (
    "This is a DICOMDIR, the index a CD or folder keeps of its images, not an image; "
    "nothing in it is stored. Send the image files it lists (a whole folder or zip of "
    "the CD is fine: each file in it is read on its own)."
)


class DicomRejected(Exception):
    """The file is not acceptable; `code` is stable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class ParsedInstance:
    data: bytes
    sha256: str
    original_sha256: str
    preamble: str  # "zero", "non_zero" or the executable kind that was neutralised
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    performed_date: dt.date | None = None
    performed_time: str = ""
    # (ScheduledProcedureStepID, RequestedProcedureID) of each RequestAttributesSequence
    # item (`request_attributes`): the orders a series fulfils, which QIDO-RS matches.
    request_attributes: tuple[tuple[str, str], ...] = ()
    instance_number: int | None = None
    number_of_frames: int | None = 1  # None: no pixel data
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    pixel_tag: str = ""  # see `pixel_tag`
    # Where its frames are, for reading them without a parse (imaging.render.pixel_layout).
    pixel_layout: dict[str, Any] = field(default_factory=dict)
    # Whether its pixels may show who the patient is (imaging.deidentify): such
    # instances are withheld from de-identified links.
    pixels_may_identify: bool = False
    warnings: list[str] = field(default_factory=list)
    # File meta elements set to what the data set says (`_meta_corrected`): the stored
    # file differs from the one received in these, and the sender is told (STOW-RS
    # warning B000).
    corrected: tuple[str, ...] = ()
    # DICOM JSON of the header (no pixel data), kept encrypted for metadata requests;
    # empty when the header cannot be expressed as JSON (then it is rebuilt on read).
    metadata: bytes = b""


PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
# Float and double float pixel data (parametric maps): their VR, which sets the bits.
FLOAT_PIXEL_VRS = {"7FE00008": "OF", "7FE00009": "OD"}
BULK_DATA_THRESHOLD = 1 << 20
BULK = "bulkdata/"  # where an instance's bulk data is, below its URL
PIXEL_DATA = "7FE00010"


def metadata_dict(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON of a dataset's header, as WADO-RS metadata returns it.

    Pixel data and what follows it (padding, signatures) are left out; the caller adds
    the pixel data's BulkDataURI. Other binary values over 1 MB are given as a
    BulkDataURI relative to the instance (`bulkdata/<path>`, see
    `imaging.dicomweb.bulkdata`), which metadata requests make absolute.
    """
    header = Dataset()
    for tag in sorted(ds.keys()):
        if tag in PIXEL_DATA_TAGS:
            break  # like reading with stop_before_pixels: nothing after the pixels either
        # As read, unconverted: a value pydicom cannot read as its VR (objects stored
        # before ingest refused them) is then one element without a value, not a failure.
        header[tag] = ds.get_item(tag)
    return dataset_json(
        header, bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_uri=lambda path: BULK + path
    )


def metadata_json(ds: Dataset) -> bytes:
    """`metadata_dict` as compact UTF-8 JSON; b"" if the header has no JSON form."""
    try:
        return json.dumps(metadata_dict(ds), separators=(",", ":"), ensure_ascii=False).encode()
    except Exception:  # pydicom raises many kinds on odd values; read time will say which
        return b""


def valid_uid(value: Any) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(UID_PATTERN.fullmatch(text))


def neutralise_preamble(data: bytes) -> tuple[bytes, str]:
    """Zero a non-zero preamble (CVE-2019-11687 polyglots); return (data, what it was)."""
    preamble = data[:PREAMBLE_BYTES]
    if not preamble.strip(b"\x00"):
        return data, "zero"
    kind = next(
        (name for magic, name in EXECUTABLE_SIGNATURES.items() if preamble.startswith(magic)),
        "non_zero",
    )
    return b"\x00" * PREAMBLE_BYTES + data[PREAMBLE_BYTES:], kind


# Group 0002 is always explicit VR little endian; these VRs have a 4-byte length after
# two reserved bytes (PS3.5 7.1.2). pydicom's own sets, so the meta is read as it reads it.
_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_LONG_LENGTH_VRS = frozenset(vr.value.encode() for vr in EXPLICIT_VR_LENGTH_32)


def dataset_offset(data: bytes) -> int | None:
    """Where the data set starts, after the file meta information (group 0002).

    Walks the meta elements rather than trusting FileMetaInformationGroupLength, which
    toolkits get wrong. None unless every element is plain explicit VR: pydicom reads an
    element whose VR bytes are no VR as implicit VR, with another length, and the two
    readings could then disagree about where the data set starts.
    """
    at = PREAMBLE_BYTES + 4
    while at + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, at)
        if group != 0x0002:
            return at
        vr = data[at + 4 : at + 6]
        if vr not in _VRS:
            return None
        if vr in _LONG_LENGTH_VRS:
            if at + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, at + 8)
            at += 12
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            at += 8
        if length == UNDEFINED_LENGTH:
            return None
        at += length
    return at if at == len(data) else None


def _check_structure(ds: Dataset, *, max_depth: int, depth: int = 0) -> None:
    if depth > max_depth:
        raise DicomRejected(
            "nesting_too_deep", f"Sequences are nested deeper than {max_depth} levels."
        )
    for tag, raw in list(ds._dict.items()):
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (
            length is not None
            and length != UNDEFINED_LENGTH
            and isinstance(value, bytes | bytearray)
            and len(value) != length
        ):
            raise DicomRejected(
                "truncated",
                f"Element {tag} declares {length} bytes but only {len(value)} are present: "
                "the file is truncated or its lengths are corrupt.",
            )
        # Every value is read once here, as pydicom reads it on first use: one it cannot
        # read as its VR (a US of three bytes, an IS of "1e400") would otherwise pass
        # ingest and fail each later read of the header.
        try:
            element = ds[tag]
        except Exception:  # pydicom raises many kinds on odd values
            name = " ".join(filter(None, [str(Tag(tag)), keyword_for_tag(tag)]))
            raise DicomRejected(
                "invalid_value",
                f"Element {name} holds a value that is not a valid {raw.VR}. "
                "Correct it and send the file again.",
            ) from None
        if element.VR == "SQ":
            for item in element.value:
                _check_structure(item, max_depth=max_depth, depth=depth + 1)


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("\x00", "").strip()[:limit]


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    return date_from_text(_text(ds, keyword))


def date_from_text(text: str) -> dt.date | None:
    """A DA value's date (its first eight digits), or None if it holds none."""
    text = text.strip()
    try:
        if len(text) < 8 or not text[:8].isdigit():
            return None
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


# A series fulfils one order, rarely a few: more items than this are not indexed.
MAX_REQUEST_ATTRIBUTES = 16


def request_attributes(ds: Dataset) -> tuple[tuple[str, str], ...]:
    """(ScheduledProcedureStepID, RequestedProcedureID) of each RequestAttributesSequence
    item that names either, in order, each once (PS3.18 Table 10.6.1-5 matches both)."""
    try:
        items = ds.get("RequestAttributesSequence") or ()
        pairs = (
            (_text(item, "ScheduledProcedureStepID", 16), _text(item, "RequestedProcedureID", 16))
            for item in items
        )
        kept = dict.fromkeys(pair for pair in pairs if any(pair))
    except (TypeError, ValueError, AttributeError):
        return ()  # a malformed item is not indexed; the header keeps what arrived
    return tuple(kept)[:MAX_REQUEST_ATTRIBUTES]


def pixel_tag(ds: Dataset) -> str:
    """Which pixel data the object holds: "7FE00010", float "7FE00008", double "7FE00009"."""
    return next((f"{tag:08X}" for tag in PIXEL_DATA_TAGS if tag in ds), "")


# Papyrus 3 Implicit VR Little Endian (retired) is uncompressed, though pydicom counts
# every syntax outside the four usual ones as encapsulated.
_PAPYRUS_3 = "1.2.840.10008.1.20"
_ITEM, _SEQUENCE_DELIMITER = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


def _holds_items(value: bytes, *, little_endian: bool) -> bool:
    """Whether `value` is wholly a run of items (encapsulated fragments) of defined length.

    Saving a compressed image under an uncompressed syntax (as pydicom's `save_as` does
    when only the syntax is changed) writes its fragments as one defined-length value.
    A real uncompressed image that happens to parse as items through to its last byte
    is not to be expected.
    """
    header = struct.Struct("<HHI" if little_endian else ">HHI")
    offset = items = 0
    while offset + header.size <= len(value):
        group, element, length = header.unpack_from(value, offset)
        offset += header.size
        if (group, element) == _SEQUENCE_DELIMITER:
            return items > 0 and offset == len(value)
        if (group, element) != _ITEM or length == 0xFFFFFFFF:
            return False
        offset += length
        items += 1
    return items > 0 and offset == len(value)


def _check_pixel_encoding(ds: Dataset, transfer_syntax: Any) -> None:
    """Refuse pixel data not laid out as its transfer syntax says.

    A compressed syntax keeps its frames encapsulated (undefined length, one item per
    fragment); an uncompressed one keeps them as one value of defined length. A file
    that says one and holds the other cannot be displayed by anyone, and would be
    stored and served as if it could.
    """
    tag = pixel_tag(ds)
    if not tag:
        return
    element = ds[int(tag, 16)]
    compressed = transfer_syntax.is_encapsulated and transfer_syntax != _PAPYRUS_3
    encapsulated = bool(element.is_undefined_length) or (
        isinstance(element.value, bytes)
        and _holds_items(element.value, little_endian=transfer_syntax.is_little_endian)
    )
    if compressed and not element.is_undefined_length:
        raise DicomRejected(
            "pixel_encoding",
            f"The transfer syntax ({transfer_syntax.name}) needs encapsulated pixel data, "
            "but the pixel data is stored as one uncompressed value. Send the file with "
            "the transfer syntax its pixels are in.",
        )
    if not compressed and encapsulated:
        raise DicomRejected(
            "pixel_encoding",
            f"The pixel data is encapsulated (compressed fragments), but the transfer "
            f"syntax ({transfer_syntax.name}) is an uncompressed one. Send the file with "
            "the transfer syntax its pixels are in.",
        )


def native_pixel_bytes(ds: Dataset, tag: str) -> int:
    """How many bytes the uncompressed pixel data at `tag` needs; 0 when its attributes
    do not say."""
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    float_bits = {"OF": 32, "OD": 64}.get(FLOAT_PIXEL_VRS.get(tag, ""))
    bits = float_bits or _int(ds, "BitsAllocated") or 0
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # chroma is subsampled horizontally: two samples per pixel on average
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_native_pixels(ds: Dataset, transfer_syntax: Any) -> None:
    tag = pixel_tag(ds)
    if not tag or transfer_syntax.is_compressed:
        return
    value = ds[int(tag, 16)].value or b""
    expected = native_pixel_bytes(ds, tag)
    if expected and len(value) < expected:
        raise DicomRejected(
            "truncated",
            f"Pixel data holds {len(value)} bytes; the image needs {expected}.",
        )


RANGES = {
    "NumberOfFrames": (1, 100_000),
    "BitsAllocated": (1, 64),
    "BitsStored": (1, 64),
    "HighBit": (0, 63),
    "Rows": (1, 65_535),
    "Columns": (1, 65_535),
    "SeriesNumber": (-2_147_483_648, 2_147_483_647),
    "InstanceNumber": (-2_147_483_648, 2_147_483_647),
}


# Checked only where there are pixels to describe: a report or a plan may carry them
# oddly, and nothing reads them there.
PIXEL_DESCRIPTION = frozenset({"BitsAllocated", "BitsStored", "HighBit"})


def _check_ranges(ds: Dataset) -> None:
    has_pixels = bool(pixel_tag(ds))
    for keyword, (low, high) in RANGES.items():
        if keyword not in ds or ds.get(keyword) in (None, ""):
            continue
        if keyword in PIXEL_DESCRIPTION and not has_pixels:
            continue
        value = _int(ds, keyword)
        if value is None or not low <= value <= high:
            raise DicomRejected(
                "invalid_value", f"{keyword} must be a whole number from {low} to {high}."
            )


DEFLATED = "1.2.840.10008.1.2.1.99"
# A deflated data set of images rarely shrinks past a tenth; a hundredth is generous.
DEFLATE_MAX_RATIO = 100


def _meta_syntax(data: bytes) -> tuple[str, int] | None:
    """The transfer syntax the file meta names, and where the data set starts; None if
    the meta cannot be read (left for the full parse to name)."""
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        # Read in the try: a value pydicom cannot decode (a VR of "XX") raises here.
        return str(meta.get("TransferSyntaxUID", "")).rstrip("\0 "), fp.tell()
    except Exception:  # pydicom fails in many shapes
        return None


def _check_inflated_size(data: bytes, *, syntax: str, offset: int, limit: int) -> None:
    """Refuse a deflated data set (Deflated Explicit VR Little Endian) that inflates past
    `limit`, before pydicom inflates it whole: a few hundred KiB can hold gigabytes of
    zeros. Inflated here a MiB at a time and counted, nothing kept."""
    if syntax != DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[offset:], 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
            if total > limit:
                break
    except zlib.error:
        raise DicomRejected(
            "malformed", "The deflated data set is not valid deflate data."
        ) from None
    if total > limit:
        raise DicomRejected(
            "too_large",
            f"The deflated data set inflates to more than {limit} bytes, the limit for a file "
            f"of this size.",
        )


def parse_part10(
    data: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    max_elements: int,
    digest: Callable[[], str] | None = None,
) -> ParsedInstance:
    """Validate an untrusted Part 10 file and extract what the index needs.

    `digest`, if given, returns the SHA-256 (hex) of `data` being computed elsewhere (on
    another thread while this one parses).
    """
    if len(data) > max_bytes:
        raise DicomRejected("too_large", f"File is larger than the {max_bytes} byte limit.")
    if len(data) < PREAMBLE_BYTES + 4:
        raise DicomRejected("not_dicom", "File is too short to be a DICOM file.")
    if data[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != b"DICM":
        raise DicomRejected(
            "not_part10",
            "Not a DICOM Part 10 file: the 'DICM' prefix after the 128-byte preamble is missing.",
        )
    original = data
    data, preamble = neutralise_preamble(data)
    meta_syntax = _meta_syntax(data)
    # A missing or unknown transfer syntax is named after the parse; without one the
    # bytes cannot be walked.
    if meta_syntax is not None and pydicom.uid.UID(meta_syntax[0]).is_transfer_syntax:
        syntax_named, offset = meta_syntax
        inflated_limit = min(max_bytes, max(len(data) * DEFLATE_MAX_RATIO, 16 << 20))
        _check_inflated_size(data, syntax=syntax_named, offset=offset, limit=inflated_limit)
        try:
            layout_check(
                data,
                offset=offset,
                transfer_syntax=syntax_named,
                max_elements=max_elements,
                max_depth=max_depth,
                max_inflated=inflated_limit,
            )
        except LayoutRefused as exc:
            raise DicomRejected(exc.code, exc.message) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
            pixel_offset = pixel_value_offset(ds)  # before any check reads the value
        except (InvalidDicomError, Exception) as exc:  # pydicom fails in many shapes
            # Its type, not its text: pydicom's messages quote the bytes it read.
            raise DicomRejected(
                "malformed",
                f"The file could not be parsed as DICOM ({type(exc).__name__}): an element, "
                "its VR or its length is malformed.",
            ) from None
        try:
            _check_structure(ds, max_depth=max_depth)
        except DicomRejected:
            raise
        except Exception as exc:
            raise DicomRejected(
                "malformed", f"A sequence could not be parsed ({type(exc).__name__})."
            ) from None
    messages = [str(w.message) for w in caught]
    if any("End of file" in m or "delimiter" in m for m in messages):
        raise DicomRejected("truncated", "The file ends before its pixel data is complete.")
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not transfer_syntax:
        raise DicomRejected("no_meta", "The file meta information (group 0002) is missing.")
    if not valid_uid(transfer_syntax):
        raise DicomRejected("invalid_uid", "TransferSyntaxUID is not a valid UID.")
    if str(meta.get("MediaStorageSOPClassUID", "")).strip("\x00 ") == MEDIA_STORAGE_DIRECTORY:
        raise DicomRejected("dicomdir", DICOMDIR_TEXT)
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = ds.get(keyword)
        if value is None or str(value).strip() == "":
            raise DicomRejected("missing_uid", f"{keyword} is missing.")
        if not valid_uid(str(value).strip("\x00 ")):
            raise DicomRejected(
                "invalid_uid",
                f"{keyword} is not a valid UID (digits and dots, at most 64 characters).",
            )
        uids[keyword] = str(value).strip("\x00 ")
    syntax = pydicom.uid.UID(str(transfer_syntax))
    if not syntax.is_transfer_syntax:
        raise DicomRejected(
            "unknown_transfer_syntax", f"Transfer syntax {syntax} is not one this server knows."
        )
    _check_ranges(ds)  # first: the pixel checks compute sizes from these values
    _check_pixel_encoding(ds, syntax)
    _check_native_pixels(ds, syntax)
    data, corrected, moved = _meta_corrected(data, ds, uids)
    if pixel_offset is not None:
        pixel_offset += moved
    original_sha256 = digest() if digest is not None else hashlib.sha256(original).hexdigest()
    return ParsedInstance(
        data=data,
        # Hashing 500 KB twice shows in STOW-RS profiles; the bytes differ only if zeroed
        # or the meta corrected.
        sha256=(
            original_sha256
            if preamble == "zero" and not corrected
            else hashlib.sha256(data).hexdigest()
        ),
        original_sha256=original_sha256,
        preamble=preamble,
        corrected=corrected,
        transfer_syntax_uid=str(transfer_syntax),
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        patient_id=_text(ds, "PatientID", 64),
        issuer=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        birth_date=_date(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex", 16),
        study_date=_date(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription", 256),
        referring_physician=_text(ds, "ReferringPhysicianName", 324),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 256),
        body_part=_text(ds, "BodyPartExamined", 64),
        performed_date=_date(ds, "PerformedProcedureStepStartDate"),
        performed_time=_text(ds, "PerformedProcedureStepStartTime", 16),
        request_attributes=request_attributes(ds),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=(_int(ds, "NumberOfFrames") or 1) if pixel_tag(ds) else None,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_allocated=_int(ds, "BitsAllocated") if pixel_tag(ds) else None,
        pixel_tag=pixel_tag(ds),
        pixel_layout=pixel_layout(ds, data=data, offset=pixel_offset),
        pixels_may_identify=pixels_may_identify(ds),
        warnings=messages[:5],
        metadata=metadata_json(ds),
    )


# The file meta elements that name the instance, and the data set's that they must equal
# (PS3.10 7.1).
_META_NAMES = (
    ("MediaStorageSOPClassUID", "SOPClassUID"),
    ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
)


def _meta_corrected(
    data: bytes, ds: Dataset, uids: dict[str, str]
) -> tuple[bytes, tuple[str, ...], int]:
    """`data` with its file meta naming the instance its data set is; the meta elements
    set, and how far the data set moved.

    The two must be the same (PS3.10 7.1), yet de-identification tools often change the
    data set's UIDs and leave the meta's, so a file names two instances. The data set's
    UID is the one every search, retrieve and audit event uses; the meta is set to it
    rather than the file refused, so a reader that trusts the meta (a viewer's cache, a
    DICOMDIR) finds what the portal lists. The data set's bytes are left as they were.
    """
    meta = ds.file_meta
    wrong = tuple(
        meta_name for meta_name, name in _META_NAMES if _meta_text(meta, meta_name) != uids[name]
    )
    if not wrong:
        return data, (), 0
    start = dataset_offset(data)
    if start is None:
        raise _uncorrectable("its elements are not all plain explicit VR")
    try:
        corrected = copy.deepcopy(meta)
        # Whole elements replaced: one of another VR keeps it, and would not take a UID.
        for meta_name, name in _META_NAMES:
            tag = Tag(meta_name)
            corrected[tag] = DataElement(tag, "UI", uids[name])
        # Nothing else is added or changed; the group length is written afresh.
        corrected[0x00020000] = DataElement(0x00020000, "UL", 0)
        written = DicomBytesIO()
        write_file_meta_info(written, corrected, enforce_standard=False)
    except Exception as exc:  # an element pydicom reads but will not write
        raise _uncorrectable(str(exc)[:80]) from None
    head = data[: PREAMBLE_BYTES + 4] + written.getvalue()
    ds.file_meta = corrected
    return head + data[start:], wrong, len(head) - start


def _uncorrectable(why: str) -> DicomRejected:
    return DicomRejected(
        "meta_mismatch",
        "The file meta information (group 0002) does not name the SOP instance and class "
        f"of its data set, and could not be corrected ({why}). Write the file again with "
        "a DICOM toolkit and send it again.",
    )


def _meta_text(meta: Dataset, keyword: str) -> str | None:
    """A meta element's value as text; None if it cannot be read (then it is replaced)."""
    try:
        return str(meta.get(keyword) or "").strip("\x00 ")
    except Exception:  # a value its VR cannot hold: pydicom raises many kinds
        return None
