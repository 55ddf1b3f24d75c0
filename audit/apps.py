from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from audit import signals  # noqa: F401  (sign-in and sign-out events)
        from audit.lookups import Mentions
        from audit.models import AuditEvent

        AuditEvent._meta.get_field("detail").register_lookup(Mentions)
