from django.apps import AppConfig


class ImagingConfig(AppConfig):
    name = "imaging"
    verbose_name = "Imaging"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pydicom import config

        # pydicom's checks of each value as it is read only warn, quoting the value
        # (which can be a name or a birth date); ingest checks what the portal relies on
        # itself and answers with its own messages.
        config.settings.reading_validation_mode = config.IGNORE
