"""System checks for settings that would weaken the portal's guarantees."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

PLAINTEXT_UPLOAD_HANDLER = "django.core.files.uploadhandler.TemporaryFileUploadHandler"
PER_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@register()
def check_upload_handlers(app_configs: Any, **kwargs: Any) -> list[Error]:
    if PLAINTEXT_UPLOAD_HANDLER in settings.FILE_UPLOAD_HANDLERS:
        return [
            Error(
                "TemporaryFileUploadHandler writes uploads to disk in plaintext.",
                hint="Remove it from FILE_UPLOAD_HANDLERS; PHI never touches disk unencrypted.",
                id="portal.E001",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_shared_counters(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Sign-in throttles and API rate limits count in the cache: one shared by every
    process, or each gunicorn worker gives an attacker its own budget."""
    if settings.CACHES["default"]["BACKEND"] in PER_PROCESS_CACHES:
        return [
            Warning(
                "The cache is per process, so sign-in throttles and API rate limits are "
                "counted separately by each worker process.",
                hint="Set REDIS_URL so every process shares one count.",
                id="portal.W001",
            )
        ]
    return []


@register(Tags.database, deploy=True)
def check_database(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """The embedded SQLite file is for one machine's demo: records and the audit chain in
    a file under PORTAL_DATA_DIR, which a rebuilt host or container loses and which each
    replica would keep its own of."""
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        return [
            Warning(
                "The database is the embedded SQLite file: DATABASE_URL (or "
                "DATABASE_URL_FILE) is not set.",
                hint="Set DATABASE_URL to the PostgreSQL database, e.g. postgres://user@host/db.",
                id="portal.W004",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_allowed_hosts(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """A wildcard host lets any Host header through: password-reset and invitation links
    built from a request, and the CSRF origin check, would trust whatever a client sent."""
    if "*" in settings.ALLOWED_HOSTS:
        return [
            Warning(
                "ALLOWED_HOSTS accepts any host ('*').",
                hint="List the portal's own host names, e.g. ALLOWED_HOSTS=portal.example.org.",
                id="portal.W005",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_base_url(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    """Emails carry links to PORTAL_BASE_URL; a one-time token in one is erased once
    sent, so a link without a host is an invitation lost, and one over http a token
    sent in the clear."""
    base = settings.PORTAL_BASE_URL
    if not base:
        return [
            Error(
                "PORTAL_BASE_URL is not set: links in emails (share links, invitations, "
                "password resets) would have no host and could not be opened.",
                hint="Set PORTAL_BASE_URL to the portal's public https:// address.",
                id="portal.E002",
            )
        ]
    if not base.startswith("https://"):
        return [
            Warning(
                "PORTAL_BASE_URL is not https://: the tokens in emailed links would "
                "travel in the clear.",
                hint="Set PORTAL_BASE_URL to the portal's public https:// address.",
                id="portal.W002",
            )
        ]
    return []


SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@register()
def check_mail_tls_modes(app_configs: Any, **kwargs: Any) -> list[Error]:
    """Django's SMTP backend refuses both at once, at the first email: every invitation,
    share link and break-glass notice would fail."""
    if settings.EMAIL_USE_TLS and settings.EMAIL_USE_SSL:
        return [
            Error(
                "EMAIL_USE_TLS and EMAIL_USE_SSL are both set: no email could be sent.",
                hint="Set one: EMAIL_USE_TLS=1 (STARTTLS, port 587) or EMAIL_USE_SSL=1 (port 465).",
                id="portal.E003",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_mail_transport(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Emails carry one-time tokens (share links, invitations, password resets): sent to
    a mail server across the network without TLS, anyone on the path can read them. A
    relay on the same host is a hop that never leaves it."""
    if (
        settings.EMAIL_BACKEND == SMTP_BACKEND
        and settings.EMAIL_HOST.lower() not in LOOPBACK_HOSTS
        and not (settings.EMAIL_USE_TLS or settings.EMAIL_USE_SSL)
    ):
        return [
            Warning(
                f"Email goes to {settings.EMAIL_HOST} without TLS: the links and one-time "
                "tokens in it would travel in the clear.",
                hint="Set EMAIL_USE_TLS=1 (STARTTLS, port 587) or EMAIL_USE_SSL=1 (port 465).",
                id="portal.W003",
            )
        ]
    return []
