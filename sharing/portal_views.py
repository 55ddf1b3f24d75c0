"""Patient portal pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.access import require_perm
from tenants.roles import Perm


@require_perm(Perm.OWN_STUDIES)
def my_studies(request: HttpRequest) -> HttpResponse:
    return render(request, "sharing/my_studies.html", {"studies": []})
