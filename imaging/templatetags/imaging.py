from __future__ import annotations

from django import template
from django.conf import settings

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """A DICOM PN ("Family^Given^Middle^Prefix^Suffix") as "Family, Given Middle"."""
    if not value:
        return ""
    alphabetic = str(value).split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {given}" if family and given else family or given


PATIENT_DETAILS = {"name": "name", "birth_date": "birth date"}


@register.filter
def patient_details(fields: list[str]) -> str:
    """Study.patient_differs in words: ["birth_date", "name"] as "birth date and name"."""
    return " and ".join(PATIENT_DETAILS.get(field, field) for field in fields)


@register.filter
def dicom_time(value: str) -> str:
    """A DICOM TM ("HHMMSS.FFFFFF", or fewer digits) as "HH:MM", or "" if it is not one."""
    text = str(value or "").strip()
    hours, minutes = text[:2], text[2:4] or "00"  # "10" is ten o'clock (PS3.5 6.2)
    if not (hours + minutes).isdigit() or len(hours + minutes) != 4:
        return ""
    return f"{hours}:{minutes}"


@register.filter
def filesize_mb(value: int) -> str:
    megabytes = (value or 0) / 1_000_000
    return f"{megabytes:.1f} MB" if megabytes < 1000 else f"{megabytes / 1000:.2f} GB"


@register.simple_tag
def viewer_access_check_ms() -> int:
    return settings.VIEWER_ACCESS_CHECK_SECONDS * 1000
