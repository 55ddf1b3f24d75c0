"""DICOMweb routes under /dicomweb/ (PS3.18). The clinic comes from the bearer token."""

from django.urls import path

from imaging.dicomweb import views

urlpatterns = [
    path("studies", views.studies, name="dicomweb_studies"),
    path("series", views.search_series, name="dicomweb_series"),
    path("instances", views.search_instances, name="dicomweb_instances"),
    path("studies/<str:study>", views.study, name="dicomweb_study"),
    path("studies/<str:study>/metadata", views.metadata_study, name="dicomweb_study_metadata"),
    path("studies/<str:study>/series", views.search_series, name="dicomweb_study_series"),
    path("studies/<str:study>/instances", views.search_instances, name="dicomweb_study_instances"),
    path(
        "studies/<str:study>/series/<str:series>",
        views.retrieve_series,
        name="dicomweb_series_retrieve",
    ),
    path(
        "studies/<str:study>/series/<str:series>/metadata",
        views.metadata_series,
        name="dicomweb_series_metadata",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances",
        views.search_instances,
        name="dicomweb_series_instances",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:instance>",
        views.retrieve_instance,
        name="dicomweb_instance",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:instance>/metadata",
        views.metadata_instance,
        name="dicomweb_instance_metadata",
    ),
    path("studies/<str:study>/thumbnail", views.thumbnail, name="dicomweb_study_thumbnail"),
    path(
        "studies/<str:study>/series/<str:series>/thumbnail",
        views.thumbnail,
        name="dicomweb_series_thumbnail",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:instance>/rendered",
        views.rendered_instance,
        name="dicomweb_instance_rendered",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/<str:numbers>",
        views.frames,
        name="dicomweb_frames",
    ),
    path(
        "studies/<str:study>/series/<str:series>/instances/<str:instance>/frames/<str:number>/rendered",
        views.rendered_instance,
        name="dicomweb_frame_rendered",
    ),
]
