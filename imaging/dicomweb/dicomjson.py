"""DICOM JSON (PS3.18 Annex F) for search results built from the index rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from imaging.models import Instance, Series, Study


def _value(vr: str, value: Any) -> dict[str, Any]:
    if value in (None, "", []):
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if vr in ("IS", "US", "UL", "DS"):
        return {"vr": vr, "Value": [int(value)]}
    if vr == "DA" and isinstance(value, dt.date):
        return {"vr": vr, "Value": [value.strftime("%Y%m%d")]}
    if isinstance(value, list):
        return {"vr": vr, "Value": value}
    return {"vr": vr, "Value": [str(value)]}


def study_json(study: Study, *, base_url: str) -> dict[str, Any]:
    patient = study.patient
    return {
        "00080020": _value("DA", study.study_date),
        "00080030": _value("TM", study.study_time),
        "00080050": _value("SH", study.accession_number),
        "00080061": _value("CS", [m for m in study.modalities.split("\\") if m]),
        "00080090": _value("PN", study.referring_physician),
        "00081030": _value("LO", study.description),
        "00081190": _value("UR", f"{base_url}/studies/{study.study_uid}"),
        "00100010": _value("PN", patient.name),
        "00100020": _value("LO", patient.patient_id),
        "00100030": _value("DA", patient.birth_date),
        "00100040": _value("CS", patient.sex),
        "0020000D": _value("UI", study.study_uid),
        "00201206": _value("IS", study.num_series),
        "00201208": _value("IS", study.num_instances),
    }


def series_json(series: Series, *, base_url: str) -> dict[str, Any]:
    study = series.study
    return {
        "00080060": _value("CS", series.modality),
        "0008103E": _value("LO", series.description),
        "00081190": _value(
            "UR", f"{base_url}/studies/{study.study_uid}/series/{series.series_uid}"
        ),
        "00180015": _value("CS", series.body_part),
        "0020000D": _value("UI", study.study_uid),
        "0020000E": _value("UI", series.series_uid),
        "00200011": _value("IS", series.series_number),
        "00201209": _value("IS", series.num_instances),
    }


def instance_json(instance: Instance, *, base_url: str) -> dict[str, Any]:
    study, series = instance.study, instance.series
    return {
        "00080016": _value("UI", instance.sop_class_uid),
        "00080018": _value("UI", instance.sop_instance_uid),
        "00081190": _value(
            "UR",
            f"{base_url}/studies/{study.study_uid}/series/{series.series_uid}"
            f"/instances/{instance.sop_instance_uid}",
        ),
        "00083002": _value("UI", instance.transfer_syntax_uid),
        "0020000D": _value("UI", study.study_uid),
        "0020000E": _value("UI", series.series_uid),
        "00200013": _value("IS", instance.instance_number),
        "00280008": _value("IS", instance.number_of_frames),
        "00280010": _value("US", instance.rows),
        "00280011": _value("US", instance.columns),
    }
