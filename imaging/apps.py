from __future__ import annotations

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

        from django.db.backends.signals import connection_created

        import imaging.dicomweb.query  # noqa: F401 - registers the DICOM matching lookups

        connection_created.connect(_sqlite_functions)


def _sqlite_functions(sender: object, connection: object, **kwargs: object) -> None:
    """Give SQLite connections an UPPER that folds every script's letters, as
    PostgreSQL's does (imaging.dicomweb.query matches person names with it)."""
    if getattr(connection, "vendor", "") != "sqlite":
        return
    from imaging.dicomweb.query import UNICODE_UPPER

    connection.connection.create_function(  # type: ignore[attr-defined]
        UNICODE_UPPER, 1, _upper, deterministic=True
    )


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value
