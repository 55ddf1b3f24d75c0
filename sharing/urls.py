from django.urls import include, path

from imaging.dicomweb.urls import share_patterns
from sharing import portal_views, views

# Inside a clinic, under /t/<slug>/.
clinic_patterns = [
    path("my/", portal_views.my_studies, name="my_studies"),
    path("studies/<uuid:study_id>/share/", views.share_new, name="share_new"),
    path("shares/", views.share_index, name="share_list"),
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
