"""QIDO-RS query parameters: parsed, validated, and turned into index filters.

Values arrive percent-decoded (Django's QueryDict). Attributes may be named by keyword
or by tag; an attribute the index cannot match is a 400 naming it, never a silent
full listing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models import Lookup, Q
from django.db.models.lookups import IContains, IExact
from django.http import QueryDict
from pydicom.datadict import keyword_for_tag

MAX_LIMIT = 1000
DEFAULT_LIMIT = 200
# Wildcards in one value (a run of * counts once) and a value's length: both bound the
# work one pattern costs the database per row. PN and LO may be as long as the index
# keeps them (imaging.dicom), every other VR matched here holds at most 64 characters;
# a longer value could match nothing.
MAX_WILDCARDS = 16
MAX_LENGTH = {"PN": 324, "LO": 256}
DEFAULT_MAX_LENGTH = 64


class QueryError(ValueError):
    """The query cannot be answered; the message says why."""


REQUESTS = "RequestAttributesSequence"
# keyword -> (tag, vr, the level it belongs to, its column on that level's model)
ATTRIBUTES: dict[str, tuple[str, str, str, str]] = {
    "StudyInstanceUID": ("0020000D", "UI", "study", "study_uid"),
    "StudyDate": ("00080020", "DA", "study", "study_date"),
    "StudyTime": ("00080030", "TM", "study", "study_time"),
    "AccessionNumber": ("00080050", "SH", "study", "accession_number"),
    "StudyID": ("00200010", "SH", "study", "study_id"),
    "ModalitiesInStudy": ("00080061", "CS", "study", "modalities"),
    "ReferringPhysicianName": ("00080090", "PN", "study", "referring_physician"),
    "StudyDescription": ("00081030", "LO", "study", "description"),
    "PatientName": ("00100010", "PN", "study", "patient__name"),
    "PatientID": ("00100020", "LO", "study", "patient__patient_id"),
    "PatientBirthDate": ("00100030", "DA", "study", "patient__birth_date"),
    "PatientSex": ("00100040", "CS", "study", "patient__sex"),
    "SeriesInstanceUID": ("0020000E", "UI", "series", "series_uid"),
    "Modality": ("00080060", "CS", "series", "modality"),
    "SeriesNumber": ("00200011", "IS", "series", "series_number"),
    "SeriesDescription": ("0008103E", "LO", "series", "description"),
    "PerformedProcedureStepStartDate": ("00400244", "DA", "series", "performed_date"),
    "PerformedProcedureStepStartTime": ("00400245", "TM", "series", "performed_time"),
    # Keys within a sequence are named by a path (PS3.18 8.3.4.1): a series matches when
    # one of its RequestAttributesSequence items matches every such key asked for.
    f"{REQUESTS}.ScheduledProcedureStepID": (
        "00400275.00400009",
        "SH",
        "series",
        "requests__scheduled_step_id",
    ),
    f"{REQUESTS}.RequestedProcedureID": (
        "00400275.00401001",
        "SH",
        "series",
        "requests__requested_procedure_id",
    ),
    "SOPInstanceUID": ("00080018", "UI", "instance", "sop_instance_uid"),
    "SOPClassUID": ("00080016", "UI", "instance", "sop_class_uid"),
    "InstanceNumber": ("00200013", "IS", "instance", "instance_number"),
}
# From a level's rows to a higher level's: an instance row names its series and study,
# a series row its study (and a study its patient, in the columns above).
_JOIN = {
    ("series", "study"): "study__",
    ("instance", "study"): "study__",
    ("instance", "series"): "series__",
}
# PS3.18 Table 10.6.1-5: whose attributes a search at each level may match on. Under a
# URL that names a study or series, attributes of that level or above only restate (or
# contradict) it; some clients repeat them (StudyInstanceUID on /studies/{study}/series),
# so they are matched like any other key rather than refused.
MATCHABLE: dict[str, tuple[str, ...]] = {
    "study": ("study",),
    "series": ("study", "series"),
    "instance": ("study", "series", "instance"),
}
BY_TAG = {tag: keyword for keyword, (tag, *_) in ATTRIBUTES.items()}
# Returned attributes a client may ask for by includefield without matching on them.
RETURN_ONLY = {
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    "RetrieveURL",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "AvailableTransferSyntaxUID",
    "BodyPartExamined",
    REQUESTS,
}
# PS3.18 Table 8.3.4-1. `accept` is read where the response is negotiated.
CONTROL = {
    "limit",
    "offset",
    "includefield",
    "fuzzymatching",
    "emptyvaluematching",
    "multiplevaluematching",
    "accept",
}
# Matching features a client may ask for that this server does not offer: the search
# runs without them and says so (PS3.18 8.3.4.1, a 299 warning).
UNSUPPORTED_MATCHING = ("emptyvaluematching", "multiplevaluematching")
# An includefield item quoted in a warning: a keyword or a tag, nothing else.
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}")
# Matched whole (fullmatch): $ would let a trailing newline through, and \d any digit
# Unicode knows.
DATE = re.compile(r"[0-9]{8}")
TIME = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")
# Whole numbers the database's integer columns hold (IS is at most 12 characters, and
# an offset beyond this is past any clinic's studies).
INT_MAX = 2**31 - 1


@dataclass
class Query:
    filters: Q = field(default_factory=Q)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    # The server set the limit (none asked for, or more than MAX_LIMIT): an answer cut
    # there carries a warning (PS3.18 8.3.4.4).
    capped: bool = False
    fuzzy: bool = False
    # What the answer's 299 warnings say the search did not do as asked.
    warnings: list[str] = field(default_factory=list)
    # The lookup path to the patient when a filter matches on patient attributes.
    patient: str | None = None
    # A filter matches on rows of which a result may have several (a series' orders):
    # the results are made distinct.
    distinct: bool = False
    # The attributes matched on, by keyword (what the search's audit event may say of
    # it: never the values).
    keys: list[str] = field(default_factory=list)


def _tag(name: str) -> str | None:
    """`name` as eight upper-case hex digits if it is a tag (GGGGEEEE or GGGG,EEEE)."""
    upper = name.upper().replace(",", "")
    return upper if re.fullmatch(r"[0-9A-F]{8}", upper) else None


def _path_keyword(name: str) -> str:
    """A path to an attribute within a sequence (`00400275.00400009`), each step named by
    tag or keyword, as the keywords' path (`RequestAttributesSequence.ScheduledProc...`)."""
    steps = []
    for step in name.split("."):
        tag = _tag(step)
        steps.append(step if tag is None else keyword_for_tag(int(tag, 16)) or step)
    return ".".join(steps)


def _keyword(name: str) -> str:
    name = name.strip()
    if "." in name:
        return _path_keyword(name)
    if (tag := _tag(name)) is None:
        return name
    if tag in BY_TAG:
        return BY_TAG[tag]
    raise QueryError(f"Attribute {name} cannot be used in a search here.")


def _returned_keyword(name: str) -> str:
    # includefield may name by tag any attribute results carry, matchable or not; a
    # sequence's results carry the items' keys the server keeps.
    name = name.strip()
    if "." in name:
        keyword = _path_keyword(name)
        return keyword if keyword in ATTRIBUTES else name
    if (tag := _tag(name)) is None:
        return name
    return BY_TAG.get(tag) or keyword_for_tag(int(tag, 16)) or name


def _int(params: QueryDict, name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name} must be a whole number, not {raw!r}.") from None
    if not 0 <= value <= INT_MAX:
        raise QueryError(f"{name} must be from 0 to {INT_MAX}.")
    return value


def _date(text: str, name: str) -> dt.date:
    if not DATE.fullmatch(text):
        raise QueryError(f"{name}: {text!r} is not a date (YYYYMMDD).")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not a valid date.") from None


def _sql_text(text: str, vendor: str) -> str:
    """`text` as an SQL string literal in a statement that takes %s parameters."""
    # E'' reads a backslash alike whatever PostgreSQL's standard_conforming_strings says.
    quoted = "E'" + text.replace("\\", "\\\\") + "'" if vendor == "postgresql" else f"'{text}'"
    return quoted.replace("%", "%%")


# SQLite's UPPER folds ASCII letters only: connections register this one, Python's
# (imaging.apps), so person names match ignoring case in any script there too.
UNICODE_UPPER = "portal_upper"


class WildcardMatch(Lookup):
    """PS3.4 C.2.2.2.4 wildcard matching, case-sensitive: * any run of characters, ? one.

    Matched with LIKE (GLOB on SQLite, whose LIKE ignores ASCII case), never a regular
    expression: both databases match these patterns in time bounded by the lengths,
    where a backtracking engine (SQLite's REGEXP is Python's) took seconds per row on a
    value like `*?*?*?*?*?*?*!`. The SQL turns the value into the pattern, so the value
    is bound as sent and a statement compiled once (portal.statements) stays right for
    every value.
    """

    lookup_name = "dicom_wildcard"
    case_sensitive = True

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        params = [*lhs_params, *rhs_params]
        vendor = connection.vendor
        if vendor == "sqlite" and self.case_sensitive:
            # GLOB's own wildcards are * and ?; only [ (a character class) needs escaping.
            return f"{lhs} GLOB REPLACE({rhs}, '[', '[[]')", params
        pattern = rhs
        # The user's %, _ and the escape character are literal; then * and ? become
        # LIKE's wildcards.
        for old, new in (("\\", "\\\\"), ("%", "\\%"), ("_", "\\_"), ("*", "%"), ("?", "_")):
            pattern = f"REPLACE({pattern}, {_sql_text(old, vendor)}, {_sql_text(new, vendor)})"
        escape = _sql_text("\\", vendor)
        if self.case_sensitive:
            return f"{lhs} LIKE {pattern} ESCAPE {escape}", params
        # As Django's iexact and icontains fold case on PostgreSQL; SQLite's own UPPER
        # and LIKE fold ASCII letters only ("Ärzte" against "ärzte").
        upper = UNICODE_UPPER if vendor == "sqlite" else "UPPER"
        return f"{upper}({lhs}) LIKE {upper}({pattern}) ESCAPE {escape}", params


class WildcardIMatch(WildcardMatch):
    """Wildcard matching ignoring case, as person names are matched."""

    lookup_name = "dicom_iwildcard"
    case_sensitive = False


class _FoldedOnSQLite(Lookup):
    """Django's `folded` lookup, except on SQLite, whose LIKE folds ASCII letters only:
    there both sides go through UNICODE_UPPER and `operator` compares them."""

    folded: type[Lookup]
    operator: str

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        if connection.vendor != "sqlite":  # Django's own, under its own name
            return self.folded(self.lhs, self.rhs).as_sql(compiler, connection)
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        sql = f"{UNICODE_UPPER}({lhs}) {self.operator} {UNICODE_UPPER}({rhs})"
        return sql, [*lhs_params, *rhs_params]


class NameIExact(_FoldedOnSQLite, IExact):
    """Equality ignoring case in any script."""

    lookup_name = "dicom_iexact"
    folded = IExact
    operator = "="


class NameIContains(_FoldedOnSQLite, IContains):
    """A substring ignoring case in any script (the value arrives as %value%, escaped)."""

    lookup_name = "dicom_icontains"
    folded = IContains
    operator = "LIKE"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        sql, params = super().as_sql(compiler, connection)
        return (f"{sql} ESCAPE '\\'" if connection.vendor == "sqlite" else sql), params


models.CharField.register_lookup(WildcardMatch)
models.CharField.register_lookup(WildcardIMatch)
models.CharField.register_lookup(NameIExact)
models.CharField.register_lookup(NameIContains)


def _time_bounds(text: str, name: str) -> tuple[str, str]:
    """Text bounds for the stored TM values (HH[MM[SS[.F...]]]) at or after, and at or
    before, the time `text`: stored times keep the precision they came with."""
    whole, _, fraction = text.partition(".")
    parts = [int(whole[i : i + 2]) for i in range(0, len(whole), 2)] if TIME.fullmatch(text) else []
    if not parts or any(part > top for part, top in zip(parts, (23, 59, 60), strict=False)):
        raise QueryError(f"{name}: {text!r} is not a time (HHMMSS).")
    end = whole + "235959"[len(whole) :] + "." + fraction.ljust(6, "9")
    fraction = fraction.rstrip("0")
    while not fraction and len(whole) > 2 and whole.endswith("00"):
        whole = whole[:-2]  # "1012" is 10:12:00 too, and must not sort before "101200"
    return whole + (f".{fraction}" if fraction else ""), end


def _match(keyword: str, vr: str, path: str, value: str, fuzzy: bool) -> Q:
    if vr == "DA":
        if "-" in value:
            start, _, end = value.partition("-")
            q = Q()
            if start:
                q &= Q(**{f"{path}__gte": _date(start, keyword)})
            if end:
                q &= Q(**{f"{path}__lte": _date(end, keyword)})
            return q
        return Q(**{path: _date(value, keyword)})
    if vr == "TM":
        # Stored times are text of one layout, so a range compares as text once its
        # bounds are written out in full (PS3.4 C.2.2.2.5). A single time is the span
        # its precision gives (1012 is 10:12:00 to 10:12:59.999999), so 101200 finds
        # a time stored as 1012 or 101200.000, as the range 101200-101200 does.
        start, dash, end = value.partition("-")
        if not dash:
            end = start
        q = Q()
        if start:
            q &= Q(**{f"{path}__gte": _time_bounds(start, keyword)[0]})
        if end:
            q &= Q(**{f"{path}__lte": _time_bounds(end, keyword)[1]})
        return q
    if vr == "UI":
        uids = [uid for uid in re.split(r"[\\,]", value) if uid]
        return Q(**{f"{path}__in": uids})
    if vr == "IS":
        try:
            number = int(value)
        except ValueError:
            raise QueryError(f"{keyword} must be a number, not {value!r}.") from None
        if abs(number) > INT_MAX:
            raise QueryError(f"{keyword} must be from {-INT_MAX} to {INT_MAX}.")
        return Q(**{path: number})
    if keyword == "ModalitiesInStudy":
        value = re.sub(r"\*+", "*", value)  # a run of * matches what one does
        if value.count("*") + value.count("?") > MAX_WILDCARDS:
            raise QueryError(
                f"{keyword}: a value may hold at most {MAX_WILDCARDS} wildcards (* or ?)."
            )
        q = Q()
        for modality in re.split(r"[\\,]", value):
            # One of the study's modalities, whole: a wildcard stays within it.
            pattern = "".join(
                {"*": r"[^\\]*", "?": r"[^\\]"}.get(c, re.escape(c)) for c in modality
            )
            q |= Q(**{f"{path}__regex": rf"(^|\\){pattern}($|\\)"})
        return q
    if "*" in value or "?" in value:
        value = re.sub(r"\*+", "*", value)  # a run of * matches what one does
        if value.count("*") + value.count("?") > MAX_WILDCARDS:
            raise QueryError(
                f"{keyword}: a value may hold at most {MAX_WILDCARDS} wildcards (* or ?)."
            )
        lookup = "dicom_iwildcard" if vr == "PN" else "dicom_wildcard"
        return Q(**{f"{path}__{lookup}": value})
    if vr == "PN" and fuzzy:
        return Q(**{f"{path}__dicom_icontains": value})
    if vr == "PN":
        return Q(**{f"{path}__dicom_iexact": value})
    return Q(**{path: value})


def _path(keyword: str, *, level: str) -> str:
    """The lookup from `level`'s rows to the column `keyword` is matched on, or a
    QueryError if a search at `level` may not match it."""
    _, _, owner, column = ATTRIBUTES[keyword]
    if owner not in MATCHABLE[level]:
        raise QueryError(f"{keyword} cannot be matched at the {level} level.")
    return _JOIN.get((level, owner), "") + column


def _flag(params: QueryDict, name: str) -> bool:
    value = params.get(name, "false").strip().lower()
    if value not in ("true", "false", ""):
        raise QueryError(f"{name} must be true or false, not {params[name]!r}.")
    return value == "true"


def _not_returned(params: QueryDict) -> list[str]:
    """includefield items no result carries. PS3.18 10.6.3.3: a server returns the
    attributes it supports, so these are left out (and named in a warning), not
    refused: viewers ask for more than any one server keeps."""
    unknown = []
    for name in params.getlist("includefield"):
        for item in name.split(","):
            item = item.strip()
            returned = _returned_keyword(item)
            if item in ("all", "") or returned in ATTRIBUTES or returned in RETURN_ONLY:
                continue
            unknown.append(item if _ATTRIBUTE_NAME.fullmatch(item) else "(unreadable)")
    return list(dict.fromkeys(unknown))


def parse_query(params: QueryDict, *, level: str) -> Query:
    """Validate QIDO parameters for a search at `level` (study, series or instance)."""
    # limit=0 would ask for an empty answer, which no client wants: it is read as no
    # limit given, for which PS3.18 8.3.4.4 has the server answer up to its own maximum
    # (and say so when it cuts there). Refusing it would also leave "from 0" wrong in
    # the message every other bad limit gets.
    asked = _int(params, "limit", 0)
    query = Query(
        limit=min(asked or DEFAULT_LIMIT, MAX_LIMIT),
        capped=not asked or asked > MAX_LIMIT,
        offset=_int(params, "offset", 0),
        fuzzy=_flag(params, "fuzzymatching"),
    )
    for name in UNSUPPORTED_MATCHING:
        if _flag(params, name):
            query.warnings.append(f"{name} is not supported; the search ran without it.")
    if unknown := _not_returned(params):
        query.warnings.append(
            f"includefield: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} "
            "not kept by this server; results carry the attributes it keeps."
        )
    for name in params:
        if name in CONTROL:
            continue
        keyword = _keyword(name)
        if keyword not in ATTRIBUTES:
            raise QueryError(f"Unknown or unsupported search attribute {name!r}.")
        vr = ATTRIBUTES[keyword][1]
        path = _path(keyword, level=level)
        for value in params.getlist(name):
            if "\x00" in value:  # no database text holds it
                raise QueryError(f"{keyword}: a value may not contain NUL.")
            # A UID list may be long: it is matched by equality, item by item.
            if vr != "UI" and len(value) > (most := MAX_LENGTH.get(vr, DEFAULT_MAX_LENGTH)):
                raise QueryError(f"{keyword}: a value may have at most {most} characters.")
            if not value:
                continue
            if keyword not in query.keys:
                query.keys.append(keyword)
            try:
                query.filters &= _match(keyword, vr, path, value, query.fuzzy)
            except QueryError:
                raise
            except ValueError:  # a value no check above foresaw: the client's error still
                raise QueryError(f"{keyword}: {value!r} cannot be matched.") from None
            if "patient__" in path:
                query.patient = path[: path.index("patient__") + len("patient")]
            query.distinct |= "requests__" in path
    return query
