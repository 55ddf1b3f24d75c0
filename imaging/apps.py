from django.apps import AppConfig


class ImagingConfig(AppConfig):
    name = "imaging"
    verbose_name = "Imaging"
    default_auto_field = "django.db.models.BigAutoField"
