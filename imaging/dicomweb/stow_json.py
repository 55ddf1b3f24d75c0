"""STOW-RS of DICOM JSON metadata with its bulk data (PS3.18 10.5.1.2).

A system without DICOM files (a converter, an AI vendor's results) sends each
instance's attributes as DICOM JSON, and the values too large for JSON (pixel data,
waveforms) as bulk data parts, each at the Content-Location its BulkDataURI names.
Each instance is rebuilt here, in memory, as a DICOM file and stored by the same
ingest as any other: the same checks, the same encryption, the same answer.

Only bulk data sent in the same request is used. A BulkDataURI naming anything else
fails its instance: fetching it would let a partner make the server call any URL.
An instance's metadata comes before its bulk data, the order PS3.18 gives them; bulk
data is held only until every instance naming it is complete, and never more of it
than one instance may be large.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite

from imaging.dicom import RANGES, native_pixel_bytes
from imaging.dicomweb.multipart import Part, PartTooLarge
from imaging.dicomweb.pixels import EXPLICIT_VR_LE, OCTET_STREAM, sent_transfer_syntax

logger = logging.getLogger(__name__)

METADATA_TYPE = "application/dicom+json"
PIXEL_DATA = "7FE00010"
TRANSFER_SYNTAX = "00020010"
NUMBER_OF_FRAMES = "00280008"
# VRs whose value is the bytes sent: what a bulk data part can carry here. Numbers and
# text in bulk data would need parsing by VR; a partner sends those in the JSON.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
MAX_URI_LENGTH = 2048
FRAME_NUMBER = re.compile(r"[1-9][0-9]{0,8}")  # ASCII digits only: str.isdigit takes "²"
# The syntaxes whose pixel data is the bytes of an application/octet-stream part.
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", EXPLICIT_VR_LE, "1.2.840.10008.1.2.1.99"})


class Unusable(Exception):
    """Metadata or bulk data that cannot make a DICOM file; the message says why."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """An instance as a DICOM file, or why there is none (`problem`)."""

    sop_class: str
    sop_instance: str
    data: bytes | None
    problem: str = ""
    too_large: bool = False


@dataclass(slots=True)
class _Waiting:
    """An instance's metadata, waiting for the bulk data it names."""

    metadata: dict[str, Any]
    sop_class: str
    sop_instance: str
    uris: frozenset[str]  # bulk data other than the pixel data
    pixel_uri: str | None
    frames: int
    # What has come: part locations (each once), and which of the pixel data's frames.
    got: set[str] = field(default_factory=set)
    frames_got: set[int] = field(default_factory=set)

    def frame_uri(self, number: int) -> str:
        return f"{self.pixel_uri}/frames/{number}"

    def complete(self) -> bool:
        if not self.uris <= self.got:
            return False
        return (
            self.pixel_uri is None
            or self.pixel_uri in self.got
            or len(self.frames_got) == self.frames
        )

    def missing(self) -> int:
        pixels_missing = (
            self.pixel_uri is not None
            and self.pixel_uri not in self.got
            and len(self.frames_got) != self.frames
        )
        return len(self.uris - self.got) + pixels_missing


class JsonStow:
    """Turns the parts of one metadata-and-bulk-data request into DICOM files.

    Feed it every part in order (`part`), then `finish`; each call gives the instances
    it completed or failed, and what failed without naming an instance. Each part is
    matched through an index of what the waiting instances name, so a request of many
    instances or frames costs no more per part than one of a few.
    """

    def __init__(
        self, *, max_held_bytes: int, max_metadata_bytes: int, max_rebuilt_bytes: int
    ) -> None:
        self._max_held = max_held_bytes
        self._max_metadata = max_metadata_bytes
        self._rebuilt_left = max_rebuilt_bytes
        self._waiting: dict[int, _Waiting] = {}  # by id(): in the order they came
        # URI -> the instances naming it, by id(): one is let go of without a search.
        self._naming: dict[str, dict[int, _Waiting]] = {}
        self._parts: dict[str, Part] = {}  # held while an instance it completes waits
        self._users: dict[str, int] = {}  # how many waiting instances hold each part
        self._weight: dict[int, int] = {}  # a waiting instance's share of its metadata part
        self._held = 0  # bulk data held, and the metadata of the instances waiting
        self._seen: set[str] = set()

    def part(self, part: Part) -> Iterator[Rebuilt]:
        """The instances this part completes or fails, one at a time: each is a whole
        DICOM file, so the caller stores them as they come rather than all at once."""
        if isinstance(part.payload, PartTooLarge):
            return iter(self._too_large(part))
        if part.type == METADATA_TYPE:
            return self._metadata(part.payload)  # type: ignore[arg-type]
        return self._bulk(part)

    def finish(self) -> list[Rebuilt]:
        """What is still waiting fails: its bulk data never came."""
        return self._fail(list(self._waiting.values()), problem=None)

    def _metadata(self, payload: bytes) -> Iterator[Rebuilt]:
        if len(payload) > self._max_metadata:
            yield Rebuilt(
                "",
                "",
                None,
                f"A metadata part is larger than {self._max_metadata:,} bytes; send fewer "
                "data sets in each part, or in each request.",
                too_large=True,
            )
            return
        try:
            datasets = json.loads(payload)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            yield _other("A metadata part is not valid JSON.")
            return
        if isinstance(datasets, dict):
            datasets = [datasets]
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            yield _other("A metadata part must be a JSON array of DICOM JSON data sets.")
            return
        if not datasets:
            yield _other("A metadata part holds no data set.")
            return
        # Parsed JSON takes several times its text; a waiting instance is counted as
        # held at its share of that text, until it is complete.
        weight = len(payload) // len(datasets)
        for metadata in datasets:
            try:
                waiting = _waiting(metadata)
            except Unusable as exc:
                sop_class, sop_instance = _uid(metadata, "00080016"), _uid(metadata, "00080018")
                yield Rebuilt(sop_class, sop_instance, None, str(exc))
                continue
            if waiting.complete():  # no bulk data: everything is in the JSON
                yield self._rebuilt(waiting)
                continue
            key = id(waiting)
            self._waiting[key] = waiting
            self._weight[key] = weight
            self._held += weight
            for uri in {*waiting.uris, waiting.pixel_uri} - {None}:
                self._naming.setdefault(uri, {})[key] = waiting  # type: ignore[index]
        if self._held > self._max_held:
            yield from self._fail(
                list(self._waiting.values()), problem=HELD_TOO_MUCH, too_large=True
            )

    def _matches(self, location: str) -> list[tuple[_Waiting, int]]:
        """The waiting instances `location` is for, each once, with the frame it is (0:
        none)."""
        found = {key: (w, 0) for key, w in self._naming.get(location, {}).items()}
        base, marker, number = location.rpartition("/frames/")
        if marker and FRAME_NUMBER.fullmatch(number):
            frame = int(number)
            for key, w in self._naming.get(base, {}).items():
                if w.pixel_uri == base and frame <= w.frames:
                    found[key] = (w, frame)
        return list(found.values())

    def _bulk(self, part: Part) -> Iterator[Rebuilt]:
        location = part.location
        if not location:
            yield _other("A bulk data part has no Content-Location naming it.")
            return
        if location in self._seen:
            yield _other("Two bulk data parts have the same Content-Location.")
            return
        self._seen.add(location)
        matches = self._matches(location)
        if not matches:
            yield _other(
                "No data set sent before this bulk data part names its Content-Location; "
                "send each instance's metadata before its bulk data."
            )
            return
        self._parts[location] = part
        self._held += len(part.payload)  # type: ignore[arg-type]
        self._users[location] = len(matches)
        for waiting, frame in matches:
            waiting.got.add(location)
            if frame:
                waiting.frames_got.add(frame)
        if self._held > self._max_held:
            yield from self._fail(
                list(self._waiting.values()), problem=HELD_TOO_MUCH, too_large=True
            )
            return
        for waiting, _ in matches:
            if waiting.complete():
                rebuilt = self._rebuilt(waiting)
                self._forget([waiting])  # its bulk data let go of before the next is made
                yield rebuilt

    def _rebuilt(self, waiting: _Waiting) -> Rebuilt:
        """The instance as a file, within what the request may rebuild in all (one bulk
        data part named by a thousand data sets would otherwise make a thousand copies)."""
        if self._rebuilt_left <= 0:
            return Rebuilt(
                waiting.sop_class,
                waiting.sop_instance,
                None,
                "The instances rebuilt from this request are larger in all than a request "
                "may be; send them in several requests.",
                too_large=True,
            )
        rebuilt = _rebuilt(waiting, self._parts)
        self._rebuilt_left -= len(rebuilt.data or b"")
        return rebuilt

    def _too_large(self, part: Part) -> list[Rebuilt]:
        matches = self._matches(part.location) if part.type != METADATA_TYPE else []
        self._seen.add(part.location)
        if not matches:
            return [Rebuilt("", "", None, "A part is larger than this server accepts.", True)]
        return self._fail(
            list({id(w): w for w, _ in matches}.values()),
            problem="Its bulk data is larger than this server accepts.",
            too_large=True,
        )

    def _fail(
        self, waiting: list[_Waiting], *, problem: str | None, too_large: bool = False
    ) -> list[Rebuilt]:
        failed = [
            Rebuilt(w.sop_class, w.sop_instance, None, problem or _missing(w), too_large)
            for w in waiting
        ]
        # Later parts for them are answered as naming nothing: the client hears of each.
        self._forget(waiting)
        return failed

    def _forget(self, done: list[_Waiting]) -> None:
        """Stop waiting for `done`, and let go of bulk data no waiting instance holds."""
        for waiting in done:
            key = id(waiting)
            if self._waiting.pop(key, None) is None:
                continue
            self._held -= self._weight.pop(key)
            for uri in {*waiting.uris, waiting.pixel_uri} - {None}:
                naming = self._naming.get(uri, {})  # type: ignore[arg-type]
                naming.pop(key, None)
                if not naming:
                    self._naming.pop(uri, None)  # type: ignore[arg-type]
            for location in waiting.got:
                self._users[location] -= 1
                if not self._users[location]:
                    del self._users[location]
                    self._held -= len(self._parts.pop(location).payload)  # type: ignore[arg-type]


HELD_TOO_MUCH = (
    "Metadata and bulk data held for instances not yet complete grew past what this "
    "server holds for a request; send each instance's bulk data together, right after its "
    "metadata, or send large instances as DICOM files."
)


def _other(problem: str) -> Rebuilt:
    return Rebuilt("", "", None, problem)


def _uid(metadata: dict[str, Any], tag: str) -> str:
    element = metadata.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    if isinstance(value, list) and value and isinstance(value[0], str) and len(value[0]) <= 64:
        return value[0]
    return ""


def _bulk_uris(metadata: dict[str, Any], *, depth: int = 0) -> Iterator[tuple[str, str, str, int]]:
    """(tag, VR, BulkDataURI, depth) of each value sent as bulk data, sequences included."""
    if depth > settings.INGEST_MAX_SEQUENCE_DEPTH:
        raise Unusable(f"Sequences are nested more than {settings.INGEST_MAX_SEQUENCE_DEPTH} deep.")
    for tag, element in metadata.items():
        if not isinstance(element, dict):
            raise Unusable(f"Attribute {tag[:8]} is not a DICOM JSON element (an object).")
        vr = element.get("vr")
        uri = element.get("BulkDataURI")
        if uri is not None:
            if not isinstance(uri, str) or not uri.strip() or len(uri) > MAX_URI_LENGTH:
                raise Unusable(f"The BulkDataURI of {tag[:8]} is not a usable URI.")
            if not isinstance(vr, str) or vr not in BINARY_VRS:
                raise Unusable(
                    f"{tag[:8]} ({str(vr)[:2]}) is sent as bulk data; only binary values "
                    f"({', '.join(sorted(BINARY_VRS))}) are accepted so. Send it in the JSON."
                )
            yield tag.upper(), vr, uri.strip(), depth
        if vr == "SQ" and isinstance(element.get("Value"), list):
            for item in element["Value"]:
                if isinstance(item, dict):
                    yield from _bulk_uris(item, depth=depth + 1)


def _frames(metadata: dict[str, Any]) -> int:
    element = metadata.get(NUMBER_OF_FRAMES)
    value = element.get("Value") if isinstance(element, dict) else None
    if not value:
        return 1
    try:
        frames = int(str(value[0]).strip()) if isinstance(value, list) else 0
    except ValueError:
        frames = 0
    low, high = RANGES["NumberOfFrames"]
    if not low <= frames <= high:
        raise Unusable(f"Number of Frames (00280008) is not a number from {low} to {high}.")
    return frames


def _waiting(metadata: dict[str, Any]) -> _Waiting:
    sop_class, sop_instance = _uid(metadata, "00080016"), _uid(metadata, "00080018")
    if not sop_class or not sop_instance:
        raise Unusable(
            "A data set needs its SOP Class UID (00080016) and SOP Instance UID (00080018)."
        )
    uris, pixel_uri = set(), None
    for tag, _vr, uri, depth in _bulk_uris(metadata):
        if tag == PIXEL_DATA and depth == 0:
            pixel_uri = uri
        else:
            uris.add(uri)
    return _Waiting(
        metadata=metadata,
        sop_class=sop_class,
        sop_instance=sop_instance,
        uris=frozenset(uris),
        pixel_uri=pixel_uri,
        frames=_frames(metadata) if pixel_uri is not None else 1,
    )


def _missing(waiting: _Waiting) -> str:
    return (
        f"{waiting.missing()} of its bulk data values never came; this server reads bulk "
        "data only from parts of the same request, at the Content-Location its BulkDataURI "
        "names."
    )


def _pixel_data(waiting: _Waiting, parts: dict[str, Part]) -> tuple[str, bytes]:
    """The pixel data's transfer syntax and value, from its part or its frames' parts."""
    whole = parts.get(waiting.pixel_uri or "")
    if whole is not None and whole.type == OCTET_STREAM:
        sent = whole.params.get("transfer-syntax", EXPLICIT_VR_LE).strip('"')
        declared = _uid(waiting.metadata, TRANSFER_SYNTAX) or EXPLICIT_VR_LE
        said = sent if sent != EXPLICIT_VR_LE else declared
        if said not in NATIVE_LITTLE_ENDIAN:
            raise Unusable(
                "Pixel data sent as application/octet-stream is uncompressed, little "
                f"endian; its metadata or part says it is in {said[:64]}. Send compressed "
                "pixel data as its image media type, one frame per part."
            )
        return EXPLICIT_VR_LE, bytes(whole.payload)  # type: ignore[arg-type]
    if whole is not None and waiting.frames == 1:
        frames = [whole]
    elif all(waiting.frame_uri(n) in parts for n in range(1, waiting.frames + 1)):
        frames = [parts[waiting.frame_uri(n)] for n in range(1, waiting.frames + 1)]
    else:
        raise Unusable(
            "Compressed pixel data of several frames goes one frame per part, each at "
            "the BulkDataURI followed by /frames/<number>."
        )
    syntaxes = {sent_transfer_syntax(part.type, part.params) for part in frames}
    if None in syntaxes or len(syntaxes) != 1:
        if any(part.type == OCTET_STREAM for part in frames):
            raise Unusable(
                "Pixel data goes either whole as application/octet-stream or compressed, "
                "one frame per part."
            )
        raise Unusable(
            "Its pixel data parts are not in one compressed media type and transfer syntax "
            "this server knows (image/jpeg, image/jls, image/jp2, image/jpx, image/jphc, "
            "image/dicom-rle)."
        )
    return syntaxes.pop(), encapsulate([bytes(part.payload) for part in frames])  # type: ignore[arg-type]


def _check_pixel_length(dataset: Dataset, syntax: str) -> None:
    """Uncompressed pixel data sent as bulk data must be exactly as long as the image
    (a byte of padding to an even length allowed): extra bytes would be stored as part
    of the image, and there is no file here whose trailing bytes a reader could skip."""
    if syntax != EXPLICIT_VR_LE or "PixelData" not in dataset:
        return
    expected = native_pixel_bytes(dataset, PIXEL_DATA)
    sent = len(dataset["PixelData"].value or b"")
    if expected and sent not in (expected, expected + expected % 2):
        raise Unusable(
            f"Its pixel data holds {sent} bytes; Rows, Columns, Samples per Pixel, Bits "
            f"Allocated and Number of Frames make the image {expected}."
        )


def _rebuilt(waiting: _Waiting, parts: dict[str, Part]) -> Rebuilt:
    try:
        data = _file(waiting, parts)
    except Unusable as exc:
        return Rebuilt(waiting.sop_class, waiting.sop_instance, None, str(exc))
    return Rebuilt(waiting.sop_class, waiting.sop_instance, data)


def _file(waiting: _Waiting, parts: dict[str, Part]) -> bytes:
    syntax, pixels = EXPLICIT_VR_LE, None
    if waiting.pixel_uri is not None:
        syntax, pixels = _pixel_data(waiting, parts)
    declared = _uid(waiting.metadata, TRANSFER_SYNTAX)
    if syntax != EXPLICIT_VR_LE and declared and declared != syntax:
        raise Unusable(
            f"The metadata's Transfer Syntax UID ({declared}) is not the one its pixel data "
            f"was sent in ({syntax})."
        )

    def value(tag: str, vr: str, uri: str) -> bytes:
        uri = uri.strip()  # as `_bulk_uris` read it
        if tag.upper() == PIXEL_DATA and uri == waiting.pixel_uri and pixels is not None:
            return pixels
        part = parts[uri]
        if part.type != OCTET_STREAM:
            raise Unusable(f"Bulk data for {tag[:8]} goes as application/octet-stream.")
        return bytes(part.payload)  # type: ignore[arg-type]

    # Group 0002 describes a file, which this is not yet: it is written below.
    metadata = {
        tag: element for tag, element in waiting.metadata.items() if not tag.startswith("0002")
    }
    try:
        dataset = Dataset.from_json(metadata, bulk_data_uri_handler=value)
        if syntax != EXPLICIT_VR_LE and "PixelData" in dataset:
            dataset["PixelData"].VR = "OB"  # encapsulated pixel data is OB (PS3.5 A.4)
        _check_pixel_length(dataset, syntax)
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = waiting.sop_class
        dataset.file_meta.MediaStorageSOPInstanceUID = waiting.sop_instance
        dataset.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except Unusable:
        raise
    except Exception as exc:
        # The type only: pydicom's messages can quote a value (a patient's name).
        logger.info("STOW-RS metadata not usable as DICOM: %s", type(exc).__name__)
        raise Unusable(
            "Its metadata is not valid DICOM JSON (PS3.18 Annex F): an attribute's tag, "
            "VR or value cannot be read."
        ) from None
    return buffer.getvalue()
