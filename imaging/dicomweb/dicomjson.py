"""DICOM JSON (PS3.18 Annex F) for search results, written from index columns.

A search reads only the columns its results name (`values_list`), not model objects, and
writes the JSON text directly: at 100 results, building model objects, then dicts, then
encoding them cost several times the query (and the dicts kept the collector busy).
Every string goes through the json module's C escaper, so a name holding quotes,
backslashes or markup is still one well-formed JSON string.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quoted
from typing import Any, NamedTuple

from imaging.dicom_json import person_name_json

Render = Callable[[Any], str]  # a column value to the JSON text of one attribute


def _values(value: Any, render: Callable[[str], str]) -> str:
    # A backslash separates the values of a multi-valued attribute (PS3.5 6.4), as it
    # does in the metadata; an empty value among them is null (PS3.18 F.2.5).
    text = str(value)
    if "\\" not in text:  # one value, as nearly every column holds
        return render(text)
    return ",".join(render(item) if item else "null" for item in text.split("\\"))


def _text(vr: str) -> Render:
    empty, start = f'{{"vr":"{vr}"}}', f'{{"vr":"{vr}","Value":['
    return lambda value: f"{start}{_values(value, _quoted)}]}}" if value else empty


def _number(vr: str) -> Render:
    empty, start = f'{{"vr":"{vr}"}}', f'{{"vr":"{vr}","Value":['
    return lambda value: empty if value is None else f"{start}{int(value)}]}}"


def _name(value: Any) -> str:
    if not value:
        return '{"vr":"PN"}'
    return f'{{"vr":"PN","Value":[{_values(value, _name_groups)}]}}'


def _name_groups(name: str) -> str:
    # Split as the instance metadata splits it, so both say the same.
    groups = person_name_json(name)
    if groups is None:
        return "null"
    return "{" + ",".join(f'"{key}":{_quoted(group)}' for key, group in groups.items()) + "}"


def _date(value: dt.date | None) -> str:
    # isoformat is several times quicker than strftime, and this runs twice per result.
    return (
        f'{{"vr":"DA","Value":["{value.isoformat().replace("-", "")}"]}}'
        if value
        else '{"vr":"DA"}'
    )


_sh = _text("SH")


def _modalities(value: str) -> str:
    modalities = ",".join(_quoted(m) for m in value.split("\\") if m)
    return f'{{"vr":"CS","Value":[{modalities}]}}' if modalities else '{"vr":"CS"}'


def _request_attributes(value: list[list[str]] | None) -> str:
    # Each item with the two keys QIDO-RS matches in it (PS3.18 Table 10.6.3-4).
    if not value:
        return '{"vr":"SQ"}'
    items = ",".join(
        f'{{"00400009":{_sh(step)},"00401001":{_sh(procedure)}}}' for step, procedure in value
    )
    return f'{{"vr":"SQ","Value":[{items}]}}'


# (tag, column relative to the level's model, how to render it)
_STUDY = (
    ("00080020", "study_date", _date),
    ("00080030", "study_time", _text("TM")),
    ("00080050", "accession_number", _text("SH")),
    ("00080061", "modalities", _modalities),
    ("00080090", "referring_physician", _name),
    ("00081030", "description", _text("LO")),
    ("00100010", "patient__name", _name),
    ("00100020", "patient__patient_id", _text("LO")),
    ("00100030", "patient__birth_date", _date),
    ("00100040", "patient__sex", _text("CS")),
    ("0020000D", "study_uid", _text("UI")),
    ("00200010", "study_id", _text("SH")),
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
    ("00400244", "performed_date", _date),
    ("00400245", "performed_time", _text("TM")),
    ("00400275", "request_attributes", _request_attributes),
)
_INSTANCE = (
    ("00080016", "sop_class_uid", _text("UI")),
    ("00080018", "sop_instance_uid", _text("UI")),
    ("00083002", "transfer_syntax_uid", _text("UI")),
    ("00200013", "instance_number", _number("IS")),
    ("00280008", "number_of_frames", _number("IS")),
    ("00280010", "rows", _number("US")),
    ("00280011", "columns", _number("US")),
    ("00280100", "bits_allocated", _number("US")),
)


def _under(prefix: str, spec: tuple) -> tuple:
    return tuple((tag, prefix + column, render) for tag, column, render in spec)


RETRIEVE_URL = "00081190"
# InstanceAvailability: every stored instance is online (PS3.18 Table 10.6.3-3 requires
# it). The same text in every result, written into the template.
CONSTANT_TAG, CONSTANT_JSON = "00080056", '{"vr":"CS","Value":["ONLINE"]}'


@dataclass(frozen=True)
class Level:
    """What a QIDO-RS result at one level holds, and where RetrieveURL points."""

    attributes: tuple[tuple[str, str, Render], ...]
    retrieve_path: tuple[tuple[str, str], ...]  # (URL segment, UID column)
    study_column: str  # the study's id, for the search's audit event

    def __post_init__(self) -> None:
        # Results list their attributes in tag order, RetrieveURL among them.
        object.__setattr__(self, "attributes", tuple(sorted(self.attributes)))

    @property
    def columns(self) -> list[str]:
        return [
            *(column for _, column, _ in self.attributes),
            *(column for _, column in self.retrieve_path),
            self.study_column,
        ]

    @property
    def tags(self) -> list[str]:
        return sorted([tag for tag, _, _ in self.attributes] + [RETRIEVE_URL])

    @property
    def url_template(self) -> str:
        return "".join(f"/{segment}/{{}}" for segment, _ in self.retrieve_path)


LEVELS = {
    "study": Level(_STUDY, (("studies", "study_uid"),), "pk"),
    "series": Level(
        _under("study__", _STUDY) + _SERIES,
        (("studies", "study__study_uid"), ("series", "series_uid")),
        "study_id",
    ),
    "instance": Level(
        _under("study__", _STUDY) + _under("series__", _SERIES) + _INSTANCE,
        (
            ("studies", "study__study_uid"),
            ("series", "series__series_uid"),
            ("instances", "sop_instance_uid"),
        ),
        "study_id",
    ),
}


def _memo(render: Render) -> Render:
    written: dict[Any, str] = {}

    def memo(value: Any) -> str:
        text = written.get(value)
        if text is None:
            text = written[value] = render(value)
        return text

    return memo


class SearchResults(NamedTuple):
    body: bytes  # the DICOM JSON array
    count: int
    studies: list[str]  # the ids of the studies the results belong to, each once


def search_results(rows: Iterable[Sequence[Any]], *, level: str, base_url: str) -> SearchResults:
    """Search result `rows` (the level's `columns`) as a DICOM JSON array."""
    spec = LEVELS[level]
    # Names repeat within one answer (a patient's studies, a referring physician's), and
    # splitting one into its groups is the dearest render: each is written once per call.
    renders = [_memo(render) if render is _name else render for _, _, render in spec.attributes]
    # One %-template per result: its tags in order, RetrieveURL in its place, and
    # InstanceAvailability written into it.
    keys = [f'"{tag}":%s' for tag in spec.tags]
    url_position = spec.tags.index(RETRIEVE_URL)
    url_columns = slice(len(renders), len(renders) + len(spec.retrieve_path))
    keys[url_position] = f'"{RETRIEVE_URL}":{{"vr":"UR","Value":[%s]}}'
    keys.insert(bisect.bisect(spec.tags, CONSTANT_TAG), f'"{CONSTANT_TAG}":{CONSTANT_JSON}')
    row_template = "{" + ",".join(keys) + "}"
    url_template = base_url + spec.url_template
    results = []
    studies: dict[str, None] = {}  # in result order
    for row in rows:
        values = [render(value) for render, value in zip(renders, row, strict=False)]
        values.insert(url_position, _quoted(url_template.format(*row[url_columns])))
        results.append(row_template % tuple(values))
        studies[str(row[-1])] = None
    body = ("[" + ",".join(results) + "]").encode()
    return SearchResults(body=body, count=len(results), studies=list(studies))
