from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from tenants.roles import Perm


def clinic(request: HttpRequest) -> dict[str, Any]:
    """The current clinic, what the member may open, and the zone times are shown in."""
    time_zone_name = timezone.get_current_timezone_name()
    membership = getattr(request, "membership", None)
    if membership is None:
        return {"clinic": None, "time_zone_name": time_zone_name}
    return {
        "clinic": request.tenant,
        "time_zone_name": time_zone_name,
        "can": {perm.name.lower(): membership.has_perm(perm) for perm in Perm},
    }
