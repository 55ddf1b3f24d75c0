from django.urls import path

from sharing import views

urlpatterns = [
    path("", views.my_studies, name="my_studies"),
]
