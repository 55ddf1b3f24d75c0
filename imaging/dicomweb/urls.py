"""DICOMweb routes (PS3.18), built once per channel (see `imaging.dicomweb.auth`).

`/dicomweb/` takes the clinic from a bearer token; `/t/<slug>/dicomweb/` serves the
portal's own viewer to a signed-in member; `/s/dicomweb/` serves a share link's
recipient, within the link's scope.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern
from django.urls import path as django_path

from imaging.dicom import valid_uid
from imaging.dicomweb import views
from imaging.dicomweb.auth import bearer_token, dicomweb_error, share_recipient, signed_in_member


def _uids_checked(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Refuse a URL whose study, series or instance is not a UID, before any view
    passes it to the database (a NUL byte there is an error in PostgreSQL)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        for level in ("study", "series", "instance"):
            if level in kwargs and not valid_uid(kwargs[level]):
                return dicomweb_error(400, f"The {level} in the URL is not a valid UID.")
        return view(request, *args, **kwargs)

    return wrapped


def dicomweb_patterns(channel: Callable, prefix: str) -> list[URLPattern]:
    def path(route: str, view: Callable, *, name: str) -> URLPattern:
        return django_path(route, channel(_uids_checked(view), name=name), name=f"{prefix}{name}")

    return [
        path("studies", views.studies, name="studies"),
        path("series", views.search_series, name="series"),
        path("instances", views.search_instances, name="instances"),
        path("studies/<str:study>", views.study, name="study"),
        path("studies/<str:study>/metadata", views.metadata_study, name="study_metadata"),
        path("studies/<str:study>/series", views.search_series, name="study_series"),
        path("studies/<str:study>/instances", views.search_instances, name="study_instances"),
        path(
            "studies/<str:study>/series/<str:series>",
            views.retrieve_series,
            name="series_retrieve",
        ),
        path(
            "studies/<str:study>/series/<str:series>/metadata",
            views.metadata_series,
            name="series_metadata",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances",
            views.search_instances,
            name="series_instances",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>",
            views.retrieve_instance,
            name="instance",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/metadata",
            views.metadata_instance,
            name="instance_metadata",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/bulkdata/<path:path>",
            views.bulkdata,
            name="bulkdata",
        ),
        path("studies/<str:study>/thumbnail", views.thumbnail, name="study_thumbnail"),
        path(
            "studies/<str:study>/series/<str:series>/thumbnail",
            views.thumbnail,
            name="series_thumbnail",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/rendered",
            views.rendered_instance,
            name="instance_rendered",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/thumbnail",
            views.instance_thumbnail,
            name="instance_thumbnail",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/<str:number>/thumbnail",
            views.instance_thumbnail,
            name="frame_thumbnail",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/<str:numbers>",
            views.frames,
            name="frames",
        ),
        path(
            "studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/<str:number>/rendered",
            views.rendered_instance,
            name="frame_rendered",
        ),
    ]


def viewer_only_patterns(channel: Callable, prefix: str) -> list[URLPattern]:
    """Not DICOMweb: what the portal's own viewer asks besides it (not for partners)."""
    view = channel(_uids_checked(views.study_access), name="study_access")
    return [django_path("studies/<str:study>/access", view, name=f"{prefix}study_access")]


urlpatterns = dicomweb_patterns(bearer_token, "dicomweb_")
viewer_patterns = dicomweb_patterns(signed_in_member, "viewer_dicomweb_") + viewer_only_patterns(
    signed_in_member, "viewer_dicomweb_"
)
share_patterns = dicomweb_patterns(share_recipient, "share_dicomweb_") + viewer_only_patterns(
    share_recipient, "share_dicomweb_"
)
