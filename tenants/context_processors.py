from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from tenants.roles import Perm


def clinic(request: HttpRequest) -> dict[str, Any]:
    """The current clinic and what the member may open, for the layout's navigation."""
    membership = getattr(request, "membership", None)
    if membership is None:
        return {"clinic": None}
    return {
        "clinic": request.tenant,
        "can": {perm.name.lower(): membership.has_perm(perm) for perm in Perm},
    }
