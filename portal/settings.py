"""Settings for the imaging portal: one module, every deploy-time value from the environment.

Embedded defaults (SQLite, filesystem storage, filesystem Celery broker, all under
PORTAL_DATA_DIR) let `make run` work on a bare machine; production sets DATABASE_URL,
REDIS_URL, SECRET_KEY, ALLOWED_HOSTS and a master key from the environment or files.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portal.env import env_bool, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("PORTAL_DATA_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env_bool("DEBUG", default=False)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off. "
            "For local development use `make run`, which sets DEBUG=1."
        )
    # Development only: stable per checkout so sessions survive restarts.
    SECRET_KEY = "dev-insecure-" + "x" * 50

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp_webauthn",
    "csp",
    "guardian",
    "rest_framework",
    "drf_spectacular",
    "portal",
    "tenants",
    "audit",
    "imaging",
    "sharing",
]

MIDDLEWARE = [
    "portal.middleware.ForwardedForMiddleware",  # first: everything after reads the address
    "portal.middleware.HeadWithoutBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.middleware.PrivacyHeadersMiddleware",
    "imaging.dicomweb.cors.DicomwebCorsMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",  # headers only: the probes too
    "portal.middleware.HealthProbeMiddleware",  # before anything that validates the host
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "tenants.middleware.TokenChannelMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "tenants.sessions.SessionSecurityMiddleware",
    "tenants.mfa.SecondFactorRequiredMiddleware",
    "tenants.middleware.TenantMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.clinic",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
_default_sqlite = f"sqlite:///{DATA_DIR / 'portal.sqlite3'}"
# A URL with a password in it: from DATABASE_URL or the file DATABASE_URL_FILE names.
DATABASE_URL = env_secret("DATABASE_URL")
if not DATABASE_URL:
    # The embedded default keeps its state here; private to the portal's user.
    DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or _default_sqlite,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        # A connection kept across requests is checked first: after a database restart
        # or failover the next request reconnects instead of failing.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so read-then-write sequences inside
        # atomic blocks (audit seq assignment) serialise instead of failing late.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    }
    DATABASES["default"]["TEST"] = {"NAME": None}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The statements every request runs (token, audit append, instance lookup, compiled
    # searches) go through portal.rows.prepared_cursor, which PostgreSQL then keeps
    # parsed and planned: about 0.1 ms saved on each. Django's other queries never are (its
    # cursors bind client-side). Behind a pooler that cannot carry prepared statements
    # across transactions (PgBouncer before 1.21 in transaction mode), set it to 0.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
        0 if env_bool("DB_PREPARED_STATEMENTS", True) else None
    )
    # An unreachable database fails a request (and a readiness probe) within seconds,
    # not after the operating system's TCP timeout. A connect_timeout in the URL wins.
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env_int("DB_CONNECT_TIMEOUT_SECONDS", 5, minimum=1)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------
AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ["email", "full_name"]},
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Guardian's anonymous user would be a platform-wide row without a clinic; nobody
# anonymous gets object permissions here.
ANONYMOUS_USER_NAME = None
GUARDIAN_RAISE_403 = False
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Imaging Portal")

# Second factor and sign-in throttling.
OTP_TOTP_THROTTLE_FACTOR = 1  # django-otp: exponential delay per device after failures
SIGNIN_ACCOUNT_FAILURE_LIMIT = env_int("SIGNIN_ACCOUNT_FAILURE_LIMIT", 5, minimum=1)
SIGNIN_IP_FAILURE_LIMIT = env_int("SIGNIN_IP_FAILURE_LIMIT", 50, minimum=1)
SIGNIN_LOCKOUT_SECONDS = env_int("SIGNIN_LOCKOUT_SECONDS", 15 * 60, minimum=1)
BACKUP_CODE_COUNT = 10
# Requests a partner token may make a minute, DICOMweb and the REST API together; 0
# turns the limit off (the benchmarks do, to measure the server rather than the limit).
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 600, minimum=0)
STOW_MAX_REQUEST_BYTES = env_int("STOW_MAX_REQUEST_BYTES", 2 * 1024 * 1024 * 1024, minimum=1)
# STOW-RS stores parts in batches, one transaction each: up to this many parts or bytes.
STOW_BATCH_INSTANCES = env_int("STOW_BATCH_INSTANCES", 50, minimum=1)
STOW_BATCH_BYTES = env_int("STOW_BATCH_BYTES", 32 * 1024 * 1024, minimum=1)
# STOW-RS of DICOM JSON metadata holds each instance's bulk data, and the metadata of
# those waiting for theirs, until it is complete: at most this much at once. An instance
# larger than that goes as a DICOM file, which is stored as it arrives.
STOW_JSON_MAX_HELD_BYTES = env_int("STOW_JSON_MAX_HELD_BYTES", 256 * 1024 * 1024, minimum=1)
# One metadata part's JSON (parsed, it takes several times its text).
STOW_JSON_MAX_METADATA_BYTES = env_int("STOW_JSON_MAX_METADATA_BYTES", 32 * 1024 * 1024, minimum=1)
# An open viewer asks this often whether its study is still reachable, and drops the
# images it holds once it is not (a grant or share revoked, a membership ended).
VIEWER_ACCESS_CHECK_SECONDS = env_int("VIEWER_ACCESS_CHECK_SECONDS", 30, minimum=1)
# Threads per process that write a batch's objects at once (disk and S3 waits overlap).
STORAGE_WRITE_THREADS = env_int("STORAGE_WRITE_THREADS", 4, minimum=1)
# Passkeys (django-otp-webauthn), a second factor after the password, never passwordless.
OTP_WEBAUTHN_ALLOW_PASSWORDLESS_LOGIN = False
OTP_WEBAUTHN_RP_NAME = env_str("WEBAUTHN_RP_NAME", "Imaging Portal")
OTP_WEBAUTHN_RP_ID_CALLABLE = "tenants.webauthn.rp_id"
OTP_WEBAUTHN_HELPER_CLASS = "tenants.webauthn.PortalWebAuthnHelper"
WEBAUTHN_RP_ID = env_str("WEBAUTHN_RP_ID")
WEBAUTHN_ALLOWED_ORIGINS = env_list("WEBAUTHN_ALLOWED_ORIGINS")
# The library checks this list at start; requests are matched by PortalWebAuthnHelper.
OTP_WEBAUTHN_ALLOWED_ORIGINS = (
    WEBAUTHN_ALLOWED_ORIGINS
    or [f"https://{host}" for host in ALLOWED_HOSTS if host and not host.startswith(".")]
    or ["https://localhost"]
)
THUMBNAIL_DELAY_SECONDS = env_int("THUMBNAIL_DELAY_SECONDS", 10)
# A series' thumbnail render may be cut off (its worker killed: out of memory, a decoder
# crash, the time limit) this many times; then it is marked failed rather than sent again
# without end. Renders that return or raise (storage down, say) do not count.
THUMBNAIL_MAX_ATTEMPTS = env_int("THUMBNAIL_MAX_ATTEMPTS", 5, minimum=1)
# A render still running after this many seconds is stopped (its worker process ends).
THUMBNAIL_TIME_LIMIT_SECONDS = env_int("THUMBNAIL_TIME_LIMIT_SECONDS", 600, minimum=1)
# Work still undone this long after it was due (a thumbnail, an email) is queued again:
# its message was lost to a broker fault or its retries were spent. The checks run as
# often; emails are retried for TASK_RECOVER_WITHIN_DAYS.
TASK_RECOVER_AFTER_MINUTES = env_int("TASK_RECOVER_AFTER_MINUTES", 30, minimum=1)
TASK_RECOVER_WITHIN_DAYS = env_int("TASK_RECOVER_WITHIN_DAYS", 7, minimum=1)
# Fault injection for the crash tests only: a pause inside the thumbnail task.
PORTAL_FAULT_THUMBNAIL_DELAY_SECONDS = env_int("PORTAL_FAULT_THUMBNAIL_DELAY_SECONDS", 0)
BREAK_GLASS_MINUTES = env_int("BREAK_GLASS_MINUTES", 60, minimum=1)
PORTAL_BASE_URL = env_str("PORTAL_BASE_URL", "http://127.0.0.1:8000" if DEBUG else "")

# Content Security Policy (django-csp): no inline script anywhere, nothing framed.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Email (password reset, break-glass and share notifications) ----------------------
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)  # STARTTLS (port 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", default=False)  # implicit TLS (port 465)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Imaging Portal <no-reply@localhost>")
# A mail server that stalls must not hold a task (and the row it claimed) for minutes.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20, minimum=1)
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3600, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["imaging.api.auth.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.access.HasClinicPerm"],
    # The per-token rate limit is counted as the token is authenticated (before the
    # permission check): imaging.api.auth.
    "DEFAULT_THROTTLE_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "portal.api_parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "portal.api_pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api_errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Imaging Portal partner API",
    "DESCRIPTION": "REST API for partners. Authenticate with `Authorization: Bearer <token>`; "
    "the clinic is the token's. DICOMweb (PS3.18) is served separately at /dicomweb/.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api_schema.error_responses",
    ],
}

# --- Sessions and transport security --------------------------------------------------
SESSION_ENGINE = "tenants.session_store"  # Django's database sessions, keys checked
# Messages can name a person ("dr.who@... can now open this study"): kept in the session,
# on the server, not in a cookie that is signed but readable.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
# Upper bounds; each clinic's policy (idle minutes, absolute hours) can only shorten them.
SESSION_COOKIE_AGE = env_int("SESSION_ABSOLUTE_SECONDS", 12 * 3600, minimum=1)
SESSION_IDLE_SECONDS = env_int("SESSION_IDLE_SECONDS", 15 * 60, minimum=1)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_NAME = "portal_session"
CSRF_COOKIE_NAME = "portal_csrf"
# A form sent with an outdated token (another tab signed in or out) gets a page that says
# so in the portal's layout, not Django's bare one, whose inline style the CSP blocks.
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# No URL (which may carry ids) ever reaches another origin. Not "no-referrer": with it,
# browsers send `Origin: null` on every form POST, which Django's CSRF check rejects.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    # Health probes come from the load balancer over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
if env_bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# How many proxies in front of the portal append to X-Forwarded-For (nginx, a load
# balancer): the client's address is the entry that many from the right. 0: the
# connection's address is the client's (direct, or PROXY protocol).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more")

# Uploads never touch disk as plaintext: small requests stay in memory, larger ones are
# spooled encrypted under a key that lives only in the process (imaging.uploads).
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "imaging.uploads.EncryptedSpoolUploadHandler",
]
FILE_UPLOAD_MAX_MEMORY_SIZE = env_int("FILE_UPLOAD_MAX_MEMORY_SIZE", 4 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 32 * 1024 * 1024, minimum=1)

# --- Internationalisation -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"

# --- Portal state, keys and storage ---------------------------------------------------
PORTAL_DATA_DIR = DATA_DIR
# The key itself (base64), or PORTAL_MASTER_KEY_FILE naming the key file: read by
# imaging.keys, which refuses one readable by group or others (a secret mounted for the
# portal: mode 0400), and made there by `init_master_key`.
PORTAL_MASTER_KEY = env_str("PORTAL_MASTER_KEY") or None
if PORTAL_MASTER_KEY and env_str("PORTAL_MASTER_KEY_FILE"):
    raise ImproperlyConfigured("Set either PORTAL_MASTER_KEY or PORTAL_MASTER_KEY_FILE, not both")
PORTAL_MASTER_KEY_PATH = Path(
    env_str("PORTAL_MASTER_KEY_FILE") or str(DATA_DIR / "master.key")
).resolve()
PORTAL_KEY_PROVIDER = env_str("PORTAL_KEY_PROVIDER", "local")
PORTAL_KMS_KEY_ID = env_str("PORTAL_KMS_KEY_ID")
# Refused at start, not at the first key: a misspelt provider would otherwise pass every
# check and `init_master_key`, and fail on the first upload.
if PORTAL_KEY_PROVIDER not in ("local", "aws-kms"):
    raise ImproperlyConfigured(
        f"PORTAL_KEY_PROVIDER must be local or aws-kms, got {PORTAL_KEY_PROVIDER!r}"
    )
if PORTAL_KEY_PROVIDER == "aws-kms" and not PORTAL_KMS_KEY_ID:
    raise ImproperlyConfigured("PORTAL_KEY_PROVIDER=aws-kms needs PORTAL_KMS_KEY_ID")
PORTAL_STORAGE_ROOT = Path(env_str("STORAGE_ROOT", str(DATA_DIR / "objects"))).resolve()
PORTAL_SPOOL_DIR = Path(env_str("SPOOL_DIR", str(DATA_DIR / "spool"))).resolve()
# S3-compatible storage for clinics whose storage_backend is "s3".
STORAGE_S3_ENDPOINT_URL = env_str("STORAGE_S3_ENDPOINT_URL") or None
STORAGE_S3_ACCESS_KEY_ID = env_str("STORAGE_S3_ACCESS_KEY_ID") or None
STORAGE_S3_SECRET_ACCESS_KEY = env_secret("STORAGE_S3_SECRET_ACCESS_KEY")
STORAGE_S3_DEFAULT_BUCKET = env_str("STORAGE_S3_BUCKET", "portal-objects")
STORAGE_S3_DEFAULT_REGION = env_str("STORAGE_S3_REGION", "us-east-1")
# Audit chain checkpoints (audit.checkpoints), outside the database. Production: a bucket
# with S3 Object Lock on the STORAGE_S3_* endpoint; else a local folder.
AUDIT_CHECKPOINT_S3_BUCKET = env_str("AUDIT_CHECKPOINT_S3_BUCKET")
AUDIT_CHECKPOINT_ROOT = Path(
    env_str("AUDIT_CHECKPOINT_ROOT", str(DATA_DIR / "audit-checkpoints"))
).resolve()
# Ingest limits, checked before any expensive work.
INGEST_MAX_INSTANCE_BYTES = env_int("INGEST_MAX_INSTANCE_BYTES", 1024 * 1024 * 1024, minimum=1)
INGEST_MAX_SEQUENCE_DEPTH = env_int("INGEST_MAX_SEQUENCE_DEPTH", 8, minimum=1)
# Data elements and sequence items in one file: pydicom builds an object for each (some
# hundreds of bytes), so a small file of empty elements could cost gigabytes. An
# enhanced multi-frame image of thousands of frames holds a few hundred thousand.
INGEST_MAX_ELEMENTS = env_int("INGEST_MAX_ELEMENTS", 500_000, minimum=1)
# One decoded frame at most (rendering, thumbnails, decoded frames): compressed data can
# claim any size in its header, and decoders allocate what it claims.
RENDER_MAX_FRAME_BYTES = env_int("RENDER_MAX_FRAME_BYTES", 256 * 1024 * 1024, minimum=1)
INGEST_MAX_ZIP_ENTRIES = env_int("INGEST_MAX_ZIP_ENTRIES", 20000, minimum=1)
INGEST_MAX_ZIP_TOTAL_BYTES = env_int(
    "INGEST_MAX_ZIP_TOTAL_BYTES", 8 * 1024 * 1024 * 1024, minimum=1
)
INGEST_MAX_ZIP_RATIO = env_int("INGEST_MAX_ZIP_RATIO", 100, minimum=1)

# --- Cache: sign-in throttles. Redis when configured so every process sees the same counts.
REDIS_URL = env_secret("REDIS_URL") or ""  # or REDIS_URL_FILE: it can hold a password
if REDIS_URL_FOR_CACHE := REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL_FOR_CACHE,
            "KEY_PREFIX": "portal",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------------------
# Workers log through LOGGING above (its redacting filters), not handlers of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    # An unacknowledged task (worker killed) is redelivered after this many seconds.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
        # A broker host that drops packets must not hold a request that has committed.
        "socket_connect_timeout": env_int("CELERY_BROKER_CONNECT_TIMEOUT_SECONDS", 2, minimum=1),
    }
else:
    # Embedded default: a filesystem broker needs no server. Messages carry ids only.
    CELERY_BROKER_URL = "filesystem://"
    CELERY_RESULT_BACKEND = None
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# Nothing the portal does reads a task's result. A task whose result is kept makes its
# sender subscribe to the result store first, which with Redis unreachable waits about
# 20 s (its own retries, not the broker's timeouts) after an ingest has committed.
# The probes that are waited on (ping, audit_chains_verify) keep theirs.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "orphan-objects-sweep": {
        "task": "imaging.tasks.orphan_objects_sweep_all",
        "schedule": env_int("ORPHAN_SWEEP_INTERVAL_SECONDS", 3600, minimum=1),
    },
    "thumbnails-pending-requeue": {
        "task": "imaging.tasks.thumbnails_pending_requeue_all",
        "schedule": 60 * TASK_RECOVER_AFTER_MINUTES,
    },
    "share-notices-unsent-requeue": {
        "task": "sharing.tasks.notices_unsent_requeue",
        "schedule": 60 * TASK_RECOVER_AFTER_MINUTES,
    },
    "share-requests-purge": {"task": "sharing.tasks.share_requests_purge", "schedule": 3600},
    "clinic-notices-unsent-requeue": {
        "task": "tenants.tasks.notices_unsent_requeue",
        "schedule": 60 * TASK_RECOVER_AFTER_MINUTES,
    },
    "audit-chains-verify": {
        "task": "audit.tasks.audit_chains_verify",
        "schedule": env_int("AUDIT_VERIFY_INTERVAL_SECONDS", 6 * 3600, minimum=1),
    },
    # How many minutes of events a database-level deletion can remove unnoticed.
    "audit-checkpoints-write": {
        "task": "audit.tasks.audit_checkpoints_write",
        "schedule": env_int("AUDIT_CHECKPOINT_INTERVAL_SECONDS", 300, minimum=1),
    },
}
CELERY_TIMEZONE = "UTC"

# --- Logging: ids only, never PHI ----------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "portal.logredact.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    # Share-link tokens are credentials: no log line keeps one.
    "filters": {
        "redact": {"()": "portal.logredact.RedactShareTokens"},
        "dicom_values": {"()": "portal.logredact.RedactQuotedValues"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own handlers (a console one under DEBUG, mail to ADMINS) would write
        # its records before redaction: its loggers go through the redacting one only.
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # django.request logs full URLs of 4xx/5xx; the portal's own handlers log ids.
        "django.request": {"level": "ERROR"},
        # runserver's request lines, through the redacting handler.
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # pydicom quotes the tag values it warns about; they can be names or birth dates.
        # Django routes Python warnings to "py.warnings"; pydicom's quote values too.
        "pydicom": {"filters": ["dicom_values"]},
        "py.warnings": {"filters": ["dicom_values"]},
        # At DEBUG the AWS SDK logs whole requests and answers: KMS Encrypt's and
        # Decrypt's carry the plaintext tenant key. Whatever LOG_LEVEL says.
        **{
            name: {"level": "WARNING"}
            for name in ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore")
        },
    },
}
