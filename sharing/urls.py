from django.urls import include, path

from imaging.dicomweb.urls import share_patterns
from sharing import invitation_views, portal_views, views

# Inside a clinic, under /t/<slug>/.
clinic_patterns = [
    path("my/", portal_views.my_studies, name="my_studies"),
    path("my/studies/<uuid:study_id>/", portal_views.my_study, name="my_study"),
    path("my/studies/<uuid:study_id>/viewer/", portal_views.my_viewer, name="my_viewer"),
    path("my/studies/<uuid:study_id>/download/", portal_views.my_download, name="my_download"),
    path("my/studies/<uuid:study_id>/share/", portal_views.my_share_new, name="my_share_new"),
    path(
        "patients/<uuid:patient_id>/portal/",
        invitation_views.patient_portal,
        name="patient_portal",
    ),
    path(
        "patients/<uuid:patient_id>/portal/invitations/<uuid:invitation_id>/withdraw/",
        invitation_views.patient_invitation_revoke,
        name="patient_invitation_revoke",
    ),
    path(
        "patients/<uuid:patient_id>/portal/accounts/<uuid:link_id>/end/",
        invitation_views.patient_link_revoke_view,
        name="patient_link_revoke",
    ),
    path("studies/<uuid:study_id>/share/", views.share_new, name="share_new"),
    path("shares/", views.share_index, name="share_list"),
    path("shares/live/", views.share_oversight, name="share_oversight"),
    path("shares/<uuid:share_id>/", views.share_detail, name="share_detail"),
    path("shares/<uuid:share_id>/revoke/", views.share_revoke_view, name="share_revoke"),
]

# The recipient's side, under /s/: no account, no clinic in the URL.
recipient_patterns = [
    path("", views.share_home, name="share_home"),
    path("viewer/", views.share_viewer, name="share_viewer"),
    path("download/", views.share_download, name="share_download"),
    path("leave/", views.share_leave, name="share_leave"),
    path("dicomweb/", include(share_patterns)),
    path("<str:token>", views.share_open, name="share_open"),
]

# The invitee's side, under /portal/: before an account exists, no clinic in the URL.
invitation_patterns = [
    path("invitation/", invitation_views.invitation_home, name="invitation_home"),
    path("invitation/<str:token>", invitation_views.invitation_open, name="invitation_open"),
]
