from django.urls import path

from sharing.api import views

urlpatterns = [
    path("shares", views.ShareListCreate.as_view(), name="api_shares"),
    path("shares/<uuid:id>", views.ShareRevoke.as_view(), name="api_share"),
]
