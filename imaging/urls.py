from django.urls import path

from imaging.views import study, viewer, worklist

urlpatterns = [
    path("", worklist.worklist, name="worklist"),
    path("upload/", worklist.upload, name="upload"),
    path("studies/<uuid:study_id>/", study.study_detail, name="study"),
    path("studies/<uuid:study_id>/viewer/", viewer.viewer, name="viewer"),
    path("studies/<uuid:study_id>/download/", study.study_download, name="study_download"),
    path("studies/<uuid:study_id>/break-glass/", study.study_break_glass, name="study_break_glass"),
    path("studies/<uuid:study_id>/grants/", study.study_grant_add, name="study_grant_add"),
    path(
        "studies/<uuid:study_id>/grants/<uuid:user_id>/revoke/",
        study.study_grant_remove,
        name="study_grant_remove",
    ),
    path(
        "studies/<uuid:study_id>/confidential/",
        study.study_confidential,
        name="study_confidential",
    ),
    path(
        "studies/<uuid:study_id>/patient-confirmed/",
        study.study_patient_confirmed,
        name="study_patient_confirmed",
    ),
]
