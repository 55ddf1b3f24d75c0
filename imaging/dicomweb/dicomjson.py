"""DICOM JSON (PS3.18 Annex F) for search results, built from index columns.

A search reads only the columns its results name (`values_list`), not model objects: at
100 results, building Study and Patient instances cost more than the query itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet


def _text(vr: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {"vr": vr, "Value": [str(value)]} if value else {"vr": vr}


def _number(vr: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {"vr": vr} if value is None else {"vr": vr, "Value": [int(value)]}


def _name(value: Any) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": str(value)}]} if value else {"vr": "PN"}


def _date(value: dt.date | None) -> dict[str, Any]:
    # isoformat is several times quicker than strftime, and this runs twice per result.
    return {"vr": "DA", "Value": [value.isoformat().replace("-", "")]} if value else {"vr": "DA"}


def _time(value: Any) -> dict[str, Any]:
    return {"vr": "TM", "Value": [str(value)]} if value else {"vr": "TM"}


def _modalities(value: str) -> dict[str, Any]:
    modalities = [m for m in value.split("\\") if m]
    return {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}


# (tag, column relative to the level's model, how to render it)
_STUDY = (
    ("00080020", "study_date", _date),
    ("00080030", "study_time", _time),
    ("00080050", "accession_number", _text("SH")),
    ("00080061", "modalities", _modalities),
    ("00080090", "referring_physician", _name),
    ("00081030", "description", _text("LO")),
    ("00100010", "patient__name", _name),
    ("00100020", "patient__patient_id", _text("LO")),
    ("00100030", "patient__birth_date", _date),
    ("00100040", "patient__sex", _text("CS")),
    ("0020000D", "study_uid", _text("UI")),
    ("00201206", "num_series", _number("IS")),
    ("00201208", "num_instances", _number("IS")),
)
_SERIES = (
    ("00080060", "modality", _text("CS")),
    ("0008103E", "description", _text("LO")),
    ("00180015", "body_part", _text("CS")),
    ("0020000E", "series_uid", _text("UI")),
    ("00200011", "series_number", _number("IS")),
    ("00201209", "num_instances", _number("IS")),
)
_INSTANCE = (
    ("00080016", "sop_class_uid", _text("UI")),
    ("00080018", "sop_instance_uid", _text("UI")),
    ("00083002", "transfer_syntax_uid", _text("UI")),
    ("00200013", "instance_number", _number("IS")),
    ("00280008", "number_of_frames", _number("IS")),
    ("00280010", "rows", _number("US")),
    ("00280011", "columns", _number("US")),
)


def _under(prefix: str, spec: tuple) -> tuple:
    return tuple((tag, prefix + column, render) for tag, column, render in spec)


RETRIEVE_URL = "00081190"


@dataclass(frozen=True)
class Level:
    """What a QIDO-RS result at one level holds, and where RetrieveURL points."""

    attributes: tuple[tuple[str, str, Callable[[Any], dict[str, Any]]], ...]
    retrieve_path: tuple[tuple[str, str], ...]  # (URL segment, UID column)

    def __post_init__(self) -> None:
        # Results list their attributes in tag order, RetrieveURL among them.
        object.__setattr__(self, "attributes", tuple(sorted(self.attributes)))

    @property
    def columns(self) -> list[str]:
        return [column for _, column, _ in self.attributes] + [
            column for _, column in self.retrieve_path
        ]

    @property
    def tags(self) -> list[str]:
        return sorted([tag for tag, _, _ in self.attributes] + [RETRIEVE_URL])

    @property
    def url_template(self) -> str:
        return "".join(f"/{segment}/{{}}" for segment, _ in self.retrieve_path)


LEVELS = {
    "study": Level(_STUDY, (("studies", "study_uid"),)),
    "series": Level(
        _under("study__", _STUDY) + _SERIES,
        (("studies", "study__study_uid"), ("series", "series_uid")),
    ),
    "instance": Level(
        _under("study__", _STUDY) + _under("series__", _SERIES) + _INSTANCE,
        (
            ("studies", "study__study_uid"),
            ("series", "series__series_uid"),
            ("instances", "sop_instance_uid"),
        ),
    ),
}


def search_results(queryset: QuerySet, *, level: str, base_url: str) -> list[dict[str, Any]]:
    """Each row of `queryset` (already filtered and sliced) as a DICOM JSON object."""
    spec = LEVELS[level]
    renders = [render for _, _, render in spec.attributes]
    tags = spec.tags
    url_position, url_columns = tags.index(RETRIEVE_URL), len(renders)
    template = base_url + spec.url_template
    results = []
    for row in queryset.values_list(*spec.columns):
        values = [render(value) for render, value in zip(renders, row, strict=False)]
        url = template.format(*row[url_columns:])
        values.insert(url_position, {"vr": "UR", "Value": [url]})
        results.append(dict(zip(tags, values, strict=True)))
    return results
