from django.urls import path

from imaging import views

urlpatterns = [
    path("", views.worklist, name="worklist"),
    path("upload/", views.upload, name="upload"),
]
