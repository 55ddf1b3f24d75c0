"""Each clinic's local time: its pages, emails and date filters read the clock in it.

Times are stored and audited in UTC; only what a person reads is shown in the clinic's
zone, named beside it (`CET`, `Europe/Zurich`) so a time is never ambiguous.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import zoneinfo

from django import forms
from django.core.exceptions import ValidationError

logger = logging.getLogger(__name__)

DEFAULT_TIME_ZONE = "UTC"
# Legacy and POSIX aliases (EST5EDT, posixrules, Etc/GMT+5 whose sign is inverted) only
# confuse a clinic choosing its zone; every place has an Area/Location name.
_NOT_OFFERED = ("Etc/", "SystemV/", "posix", "right/")


@functools.cache
def time_zone_names() -> tuple[str, ...]:
    """The zones a clinic may choose, by IANA name, sorted."""
    names = {
        name
        for name in zoneinfo.available_timezones()
        if "/" in name and not name.startswith(_NOT_OFFERED)
    }
    return (DEFAULT_TIME_ZONE, *sorted(names))


def validate_time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(
            "Choose a time zone by its IANA name, for example Europe/Zurich or America/Chicago.",
            code="invalid_time_zone",
        )


def time_zone_form_field() -> forms.ChoiceField:
    """A list of the zones offered, for the admin's clinic forms."""
    return forms.ChoiceField(
        label="Time zone",
        choices=[(name, name) for name in time_zone_names()],
        help_text="The clinic's local time: pages, emails and the audit log's dates use it. "
        "Records are kept in UTC whatever it is.",
    )


def zone_named(name: str) -> zoneinfo.ZoneInfo:
    """The zone a clinic chose; UTC if its name left the zone database since."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        logger.warning("time zone %r is not in the zone database; showing UTC", name)
        return zoneinfo.ZoneInfo(DEFAULT_TIME_ZONE)


def local_time_text(*, at: dt.datetime, zone: zoneinfo.ZoneInfo) -> str:
    """`2026-11-24 15:00 CET`, for emails and messages written outside a request."""
    local = at.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"
