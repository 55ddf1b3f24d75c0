from django.urls import path

from imaging.api import views

urlpatterns = [
    path("studies", views.StudyList.as_view(), name="api_studies"),
    path("studies/<uuid:id>", views.StudyDetail.as_view(), name="api_study"),
    path("studies/<uuid:id>/series", views.SeriesList.as_view(), name="api_study_series"),
]
