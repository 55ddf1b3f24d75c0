"""Staff pages for studies. The worklist fills in as ingest lands."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.access import require_perm
from tenants.roles import Perm


@require_perm(Perm.WORKLIST_VIEW, Perm.STUDY_VIEW_GRANTED)
def worklist(request: HttpRequest) -> HttpResponse:
    return render(request, "imaging/worklist.html", {"studies": []})
