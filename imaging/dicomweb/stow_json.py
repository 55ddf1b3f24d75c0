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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite

from imaging.dicom import RANGES
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
        return len(self.uris - self.got) + (0 if self.complete() else 1)


class JsonStow:
    """Turns the parts of one metadata-and-bulk-data request into DICOM files.

    Feed it every part in order (`part`), then `finish`; each call gives the instances
    it completed or failed, and what failed without naming an instance. Each part is
    matched through an index of what the waiting instances name, so a request of many
    instances or frames costs no more per part than one of a few.
    """

    def __init__(self, *, max_held_bytes: int) -> None:
        self._max_held = max_held_bytes
        self._waiting: dict[int, _Waiting] = {}  # by id(): in the order they came
        self._naming: dict[str, list[_Waiting]] = {}  # URI -> the instances naming it
        self._parts: dict[str, Part] = {}  # held while an instance it completes waits
        self._users: dict[str, int] = {}  # how many waiting instances hold each part
        self._held = 0
        self._seen: set[str] = set()

    def part(self, part: Part) -> list[Rebuilt]:
        if isinstance(part.payload, PartTooLarge):
            return self._too_large(part)
        if part.type == METADATA_TYPE:
            return self._metadata(part.payload)
        return self._bulk(part)

    def finish(self) -> list[Rebuilt]:
        """What is still waiting fails: its bulk data never came."""
        return self._fail(list(self._waiting.values()), problem=None)

    def _metadata(self, payload: bytes) -> list[Rebuilt]:
        try:
            datasets = json.loads(payload)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return [_other("A metadata part is not valid JSON.")]
        if isinstance(datasets, dict):
            datasets = [datasets]
        if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
            return [_other("A metadata part must be a JSON array of DICOM JSON data sets.")]
        done: list[Rebuilt] = []
        for metadata in datasets:
            try:
                waiting = _waiting(metadata)
            except Unusable as exc:
                sop_class, sop_instance = _uid(metadata, "00080016"), _uid(metadata, "00080018")
                done.append(Rebuilt(sop_class, sop_instance, None, str(exc)))
                continue
            if waiting.complete():  # no bulk data: everything is in the JSON
                done.append(_rebuilt(waiting, self._parts))
                continue
            self._waiting[id(waiting)] = waiting
            for uri in {*waiting.uris, waiting.pixel_uri} - {None}:
                self._naming.setdefault(uri, []).append(waiting)  # type: ignore[arg-type]
        return done

    def _matches(self, location: str) -> list[tuple[_Waiting, int]]:
        """The waiting instances `location` is for, each with the frame it is (0: none)."""
        found = [(w, 0) for w in self._naming.get(location, ())]
        base, marker, number = location.rpartition("/frames/")
        if marker and number.isdigit():
            found += [
                (w, int(number))
                for w in self._naming.get(base, ())
                if w.pixel_uri == base and 1 <= int(number) <= w.frames
            ]
        return found

    def _bulk(self, part: Part) -> list[Rebuilt]:
        location = part.location
        if not location:
            return [_other("A bulk data part has no Content-Location naming it.")]
        if location in self._seen:
            return [_other("Two bulk data parts have the same Content-Location.")]
        self._seen.add(location)
        matches = self._matches(location)
        if not matches:
            return [
                _other(
                    "No data set sent before this bulk data part names its Content-Location; "
                    "send each instance's metadata before its bulk data."
                )
            ]
        self._parts[location] = part
        self._held += len(part.payload)  # type: ignore[arg-type]
        self._users[location] = len(matches)
        for waiting, frame in matches:
            waiting.got.add(location)
            if frame:
                waiting.frames_got.add(frame)
        if self._held > self._max_held:
            return self._fail(
                list(self._waiting.values()),
                problem=(
                    "Bulk data for instances not yet complete grew past what one instance "
                    "may be; send each instance's bulk data together, after its metadata."
                ),
                too_large=True,
            )
        done = [w for w, _ in matches if w.complete()]
        rebuilt = [_rebuilt(w, self._parts) for w in done]
        self._forget(done)
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
            if self._waiting.pop(id(waiting), None) is None:
                continue
            for uri in {*waiting.uris, waiting.pixel_uri} - {None}:
                naming = self._naming.get(uri, [])  # type: ignore[arg-type]
                naming[:] = [w for w in naming if w is not waiting]
                if not naming:
                    self._naming.pop(uri, None)  # type: ignore[arg-type]
            for location in waiting.got:
                self._users[location] -= 1
                if not self._users[location]:
                    del self._users[location]
                    self._held -= len(self._parts.pop(location).payload)  # type: ignore[arg-type]


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
            if vr not in BINARY_VRS:
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
