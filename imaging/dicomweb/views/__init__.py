"""DICOMweb (PS3.18) views, one module per service.

`qido` searches, `wado` retrieves instances and metadata, `images` serves frames, bulk
data, rendered images and thumbnails, `stow` stores; `common` holds what they share
(the caller, the instances in its reach, audit, content negotiation). A study's URL
answers both GET (retrieve) and POST (store), so its dispatch lives here.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods

from imaging.dicomweb.views.images import (
    bulkdata,
    frames,
    instance_thumbnail,
    rendered_instance,
    thumbnail,
)
from imaging.dicomweb.views.qido import (
    search_instances,
    search_series,
    search_studies,
    study_access,
)
from imaging.dicomweb.views.stow import store
from imaging.dicomweb.views.wado import (
    metadata_instance,
    metadata_series,
    metadata_study,
    retrieve_instance,
    retrieve_series,
    retrieve_study,
)

__all__ = [
    "bulkdata",
    "frames",
    "instance_thumbnail",
    "metadata_instance",
    "metadata_series",
    "metadata_study",
    "rendered_instance",
    "retrieve_instance",
    "retrieve_series",
    "retrieve_study",
    "search_instances",
    "search_series",
    "search_studies",
    "store",
    "studies",
    "study",
    "study_access",
    "thumbnail",
]


@require_http_methods(["GET", "HEAD", "POST"])
def studies(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return store(request)
    return search_studies(request)


@require_http_methods(["GET", "HEAD", "POST"])
def study(request: HttpRequest, study: str) -> HttpResponse:
    if request.method == "POST":
        return store(request, study=study)
    return retrieve_study(request, study=study)
