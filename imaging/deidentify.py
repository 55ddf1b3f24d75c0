"""De-identification for de-identified share links: PS3.15 Annex E, Basic Profile.

The attributes and their actions are Table E.1-1 of the standard's 2026c release, as
`dicom-anonymizer` carries it (a table of several hundred attributes is data to keep
current with the standard, not to retype). The actions are applied here, to every
nested data set and to the file meta, with these options of PS3.15 E.3:

- Retain UIDs (113110): the recipient's viewer addresses the study by its UIDs, and
  they are random numbers, not identity.
- Retain Longitudinal Temporal Information with Full Dates (113106): the recipient sees
  when the study was made, as the share page says; the birth date and time still go.
- Retain Patient Characteristics (113108), the coded and measured ones only: sex, age,
  size, weight, pregnancy and smoking status (free-text ones such as allergies go).

Private attributes are removed. Pixel data are not cleaned (the Clean Pixel Data and
Clean Recognizable Visual Features options are not offered): an instance whose pixels
may show who the patient is (`pixels_may_identify`) is withheld from de-identified
links, with the rest of its series, instead of being sent as if it were clean.
"""

from __future__ import annotations

import io

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid

_TABLE = dicom_anonymization_database_selector("dicomfields_2026c")

# Each table action reduced to what this profile does. Where the standard lets the IOD
# decide (X/Z, X/D, Z/D, X/Z/D), the element is kept empty or with a dummy value rather
# than removed, so a viewer still finds the Type 1 and 2 attributes it expects.
_ACTION_OF_CATEGORY = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "K",  # Retain UIDs
    "Z_D_TAGS": "D",
    "X_Z_TAGS": "Z",
    "X_D_TAGS": "D",
    "X_Z_D_TAGS": "D",
    "X_Z_U_STAR_TAGS": "K",  # sequences of references: their UIDs are retained
}


# SOP classes whose pixels carry identifying text or features as a rule, unless the
# instance says otherwise (Burned In Annotation NO): screen captures and scanned
# documents, ultrasound (the scanner burns the patient's name into the image), visible
# light photographs, video and slide labels, and encapsulated documents (a PDF report
# has the name on it). Prefixes end with a dot or are whole UIDs.
_PIXELS_IDENTIFY_AS_A_RULE = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.",  # Multi-frame Secondary Captures
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame (retired, still written)
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound (retired, still written)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound, Enhanced US Volume, Photoacoustic
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image, trial (retired)
    "1.2.840.10008.5.1.4.1.1.77.2",  # VL Multi-frame Image, trial (retired)
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible light: endoscopy, microscopy, photographs
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF, CDA, STL, OBJ, MTL
)
# Photographs show a face as a rule: Burned In Annotation NO says there is no text, not
# that there is no face, so only Recognizable Visual Features NO clears them.
_FACES_AS_A_RULE = (
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.77.1.4.",  # Video Photographic Image
)


def pixels_may_identify(ds: Dataset) -> bool:
    """Whether the instance's pixels (or document) may show who the patient is.

    Burned In Annotation (0028,0301) or Recognizable Visual Features (0028,0302) YES
    says so; Burned In Annotation NO says otherwise, except for photographs, which need
    Recognizable Visual Features NO (`_FACES_AS_A_RULE`); with neither, the SOP class
    decides (`_PIXELS_IDENTIFY_AS_A_RULE`). Header-only objects are not at risk here:
    their attributes are de-identified.
    """
    features = _flag(ds, 0x00280302)
    if features == "YES":
        return True
    sop_class = str(ds.get("SOPClassUID", ""))
    if features != "NO" and _in_classes(sop_class, _FACES_AS_A_RULE):
        return True
    burned_in = _flag(ds, 0x00280301)
    if burned_in:
        return burned_in != "NO"  # YES, or a value nobody can vouch for
    return _in_classes(sop_class, _PIXELS_IDENTIFY_AS_A_RULE)


def _in_classes(sop_class: str, rules: tuple[str, ...]) -> bool:
    return any(
        sop_class == rule or (rule.endswith(".") and sop_class.startswith(rule)) for rule in rules
    )


def _flag(ds: Dataset, tag: int) -> str:
    element = ds.get(tag)
    value = element.value if element is not None else None
    return str(value).strip().upper() if value else ""


def _tables() -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for category, action in _ACTION_OF_CATEGORY.items():
        for entry in _TABLE[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:  # a repeating group (curves, overlays): value and mask per half
                group, element, group_mask, element_mask = entry
                mask = (group_mask << 16) | element_mask
                masked.append((((group << 16) | element) & mask, mask, action))
    return exact, masked


_EXACT, _MASKED = _tables()

_BIRTH = {0x00100030, 0x00100032}  # PatientBirthDate, PatientBirthTime
_CHARACTERISTICS = {
    0x00101010,  # PatientAge
    0x00100040,  # PatientSex
    0x00101020,  # PatientSize
    0x00101030,  # PatientWeight
    0x00102203,  # PatientSexNeutered
    0x001021C0,  # PregnancyStatus
    0x001021A0,  # SmokingStatus
}
_DATES = {"DA", "DT", "TM"}

# CID 7050 codes for what was done, in DeidentificationMethodCodeSequence.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113110", "Retain UIDs Option"),
)
METHOD = "PS3.15 Basic Profile: Retain UIDs, Full Dates, Characteristics"  # LO: 64 at most


def _action(tag: int) -> str | None:
    if (action := _EXACT.get(tag)) is not None:
        return action
    for value, mask, masked_action in _MASKED:
        if tag & mask == value:
            return masked_action
    return None


def _dummy(vr: str, value: object) -> object:
    """A value of the VR that says nothing (action D)."""
    if vr == "PN":
        return "ANONYMOUS"
    if vr == "UI":
        # Derived from the original, so references between objects still agree.
        return generate_uid(entropy_srcs=[str(value)])
    if vr in ("DA", "DT", "TM"):
        return {"DA": "19000101", "DT": "19000101000000", "TM": "000000"}[vr]
    if vr == "AS":
        return "000Y"
    if vr in ("DS", "IS"):
        return "0"
    if vr in ("FD", "FL", "SS", "US", "SL", "UL", "SV", "UV"):
        return 0
    if vr == "UR":
        return "http://anonymized.invalid"
    if vr in ("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"):
        return "ANONYMIZED"
    return b""  # OB, OW, UN and the other binary VRs


def _readable(ds: Dataset, tag: BaseTag) -> DataElement | None:
    """The element at `tag`; None, and the element removed, if its value cannot be read
    as its VR (objects stored before ingest refused such values): what cannot be read
    cannot be judged safe to keep."""
    try:
        return ds[tag]
    except Exception:  # pydicom raises many kinds on odd values
        del ds[tag]
        return None


def _dummy_items(sequence: Sequence) -> None:
    for item in sequence:
        for tag in list(item.keys()):
            element = _readable(item, tag)
            if element is None:
                continue
            if element.tag.is_private:
                del item[tag]
            elif element.VR == "SQ":
                _dummy_items(element.value)
            elif not element.is_empty:
                element.value = _dummy(element.VR, element.value)


def _clean(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        element = _readable(ds, tag)
        if element is None:
            continue
        if element.tag.is_private:
            del ds[tag]
            continue
        action = _action(int(tag))
        keep = (
            action in (None, "K")
            or int(tag) in _CHARACTERISTICS
            or (element.VR in _DATES and int(tag) not in _BIRTH)
        )
        if keep:
            if element.VR == "SQ":
                for item in element.value:
                    _clean(item)
            continue
        if action == "X":
            del ds[tag]
        elif action == "Z":
            element.value = Sequence() if element.VR == "SQ" else None
        elif element.VR == "SQ":
            _dummy_items(element.value)
        elif not element.is_empty:
            element.value = _dummy(element.VR, element.value)


def deidentify(ds: Dataset, *, pseudonym: str) -> Dataset:
    """De-identify `ds` in place; the patient becomes ANONYMOUS with ID `pseudonym`."""
    _clean(ds)
    if getattr(ds, "file_meta", None) is not None:
        _clean(ds.file_meta)
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = Sequence([_code(*code) for code in _METHOD_CODES])
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


class DeidentifyRefused(ValueError):
    """The object cannot be de-identified safely; the message says why."""


def deidentified_bytes(data: bytes, *, pseudonym: str) -> bytes:
    """A stored Part 10 file, de-identified.

    Compressed pixel data is decoded (explicit VR little endian): a compressed bitstream
    can carry text that de-identifying the header never sees (JPEG comment and
    application segments, JPEG 2000 comments). One that cannot be decoded, or would
    decode past `MAX_DECODED_BYTES`, is refused, never sent as stored.
    """
    # Imported here: imaging.dicom, which bulkdata imports, imports this module.
    from imaging.dicomweb.bulkdata import MAX_DECODED_BYTES, decoded_size

    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        if decoded_size(ds) > MAX_DECODED_BYTES:
            raise DeidentifyRefused("The stored image is too large to decode at once.")
        try:
            ds.decompress()
        except Exception as exc:  # the decoders raise many kinds
            raise DeidentifyRefused(f"The stored image cannot be decoded ({exc}).") from None
    deidentify(ds, pseudonym=pseudonym)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
