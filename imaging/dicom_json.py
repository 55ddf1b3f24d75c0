"""A dataset in the DICOM JSON model (PS3.18 Annex F), for instance metadata. pydicom only.

pydicom's `Dataset.to_json_dict` raises on values that ingest rightly accepts, which
turned a metadata request for such an instance into a server error: a multi-valued
person name with an empty value (`Doe^John\\`), or a decimal string that is not a
number; it writes NaN and infinity as JSON numbers, which JSON does not have; and it
rounds an integer string that is not an integer ("1.5"). This writes those elements
itself and hands every other one to pydicom.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

logger = logging.getLogger(__name__)

_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_NUMBERS = {"IS": int, "DS": float}
_FLOAT_VRS = ("DS", "FL", "FD")

BulkDataUri = Callable[[str], str]  # a value's path (`00540016/0/00181072`) to its URI


def _each(value: Any) -> Iterable[Any]:
    return value if isinstance(value, MultiValue | list | tuple) else [value]


def person_name_json(text: str) -> dict[str, str] | None:
    """One person name value: its component groups (PS3.18 F.2.2), None when empty.

    Groups are separated by "=" (PS3.5 6.2): "Yamada^Tarou=山田^太郎=やまだ^たろう" is
    three, each its own member. They are written up to the last one given, as pydicom
    does; search results use this too.
    """
    groups = text.split("=")[: len(_NAME_GROUPS)]
    while groups and not groups[-1]:
        groups.pop()
    return dict(zip(_NAME_GROUPS, groups, strict=False)) if groups else None


def _name_element(element: DataElement) -> dict[str, Any]:
    # An empty value among several is null (PS3.18 F.2.5).
    values = [person_name_json(str(v)) if v else None for v in _each(element.value)]
    return {"vr": "PN", "Value": values}


def _number_element(element: DataElement) -> dict[str, Any]:
    # A value that is not a number keeps its text: IS and DS may be JSON strings
    # (PS3.18 F.2.3, as amended by CP 1861), and a number would have to be made up.
    convert = _NUMBERS[element.VR]
    values: list[Any] = []
    for item in _each(element.value):
        text = str(item).strip() if item is not None else ""
        try:
            number = convert(text) if text else None
        except ValueError:
            number = text
        # JSON has no NaN or infinity ("1e999" reads as one): those keep their text too.
        values.append(text if isinstance(number, float) and not math.isfinite(number) else number)
    return {"vr": element.VR, "Value": values}


def _special_float(value: float) -> str:
    # JSON has no NaN or infinity; binary floats holding one are written as these
    # strings, as other DICOM JSON writers do.
    return "NaN" if math.isnan(value) else "inf" if value > 0 else "-inf"


def _finite_json(result: dict[str, Any], element: DataElement) -> dict[str, Any]:
    values = result.get("Value")
    if not values or all(not isinstance(v, float) or math.isfinite(v) for v in values):
        return result
    if element.VR == "DS":
        return _number_element(element)
    return {
        **result,
        "Value": [
            _special_float(v) if isinstance(v, float) and not math.isfinite(v) else v
            for v in values
        ],
    }


def dataset_json(
    ds: Dataset, *, bulk_data_threshold: int, bulk_data_uri: BulkDataUri, path: str = ""
) -> dict[str, Any]:
    """`ds` as a DICOM JSON object, nested sequences included.

    A binary value longer than `bulk_data_threshold` is given as the BulkDataURI
    `bulk_data_uri` makes of its path: tags, and 0-based item indexes through sequences,
    joined by "/" below `path`. An element that still has no JSON form is kept as an
    attribute without a value, and its tag (never its value) is logged: the stored
    object is unchanged and is what a retrieve returns.
    """
    result: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields its elements)
        key = f"{tag:08X}"
        try:
            element = ds[tag]
            result[key] = _element_json(
                element,
                bulk_data_threshold=bulk_data_threshold,
                bulk_data_uri=bulk_data_uri,
                path=path + key,
            )
        except Exception:  # pydicom raises many kinds on odd values
            logger.warning("tag %s has no DICOM JSON form; sent without its value", key)
            result[key] = {"vr": ds.get_item(tag).VR or "UN"}
    return result


def _element_json(
    element: DataElement, *, bulk_data_threshold: int, bulk_data_uri: BulkDataUri, path: str
) -> dict[str, Any]:
    if element.VR == "SQ":  # an empty sequence too has a Value, as pydicom writes it
        items = [
            dataset_json(
                item,
                bulk_data_threshold=bulk_data_threshold,
                bulk_data_uri=bulk_data_uri,
                path=f"{path}/{index}/",
            )
            for index, item in enumerate(element.value)
        ]
        return {"vr": "SQ", "Value": items}
    if element.is_empty:
        return {"vr": element.VR}
    if element.VR == "PN":
        return _name_element(element)
    if element.VR == "IS":
        # pydicom reads "1.5" as an IS (with a warning) and writes it as the integer 1:
        # a value silently changed. Each value is written from its own text instead.
        return _number_element(element)
    try:
        result = element.to_json_dict(
            bulk_data_element_handler=lambda _: bulk_data_uri(path),
            bulk_data_threshold=bulk_data_threshold,
        )
        return _finite_json(result, element) if element.VR in _FLOAT_VRS else result
    except ValueError:
        if element.VR in _NUMBERS:
            return _number_element(element)
        raise
