"""Settings come from the environment, fail loudly when wrong, and are secure with DEBUG off."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import env

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = secrets.token_urlsafe(64)


def _run(args: list[str], extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    # Only what production would set: no DATABASE_URL, REDIS_URL or test variables.
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PORTAL_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# Redis is not reached by `check`; it is named because production shares counters in it.
PROD = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "portal.example.org",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "PORTAL_BASE_URL": "https://portal.example.org",
    "DATABASE_URL": "postgres://portal@db.internal:5432/portal",
}


def test_deploy_check_passes_with_production_values(tmp_path):
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PROD, "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_deploy_check_warns_when_throttles_are_counted_per_process(tmp_path):
    without_redis = {k: v for k, v in PROD.items() if k != "REDIS_URL"}

    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**without_redis, "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode != 0
    assert "portal.W001" in result.stderr + result.stdout
    assert "REDIS_URL" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("base_url", "check"), [("", "portal.E002"), ("http://portal.example.org", "portal.W002")]
)
def test_deploy_check_refuses_emailed_links_without_a_host_or_tls(tmp_path, base_url, check):
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PROD, "PORTAL_BASE_URL": base_url, "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode != 0
    assert check in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("mail", "warned"),
    [
        ({"EMAIL_HOST": "smtp.example.org"}, True),
        ({"EMAIL_HOST": "smtp.example.org", "EMAIL_USE_TLS": "1", "EMAIL_PORT": "587"}, False),
        ({"EMAIL_HOST": "smtp.example.org", "EMAIL_USE_SSL": "1", "EMAIL_PORT": "465"}, False),
        ({"EMAIL_HOST": "127.0.0.1"}, False),  # a relay on the same host
    ],
)
def test_deploy_check_warns_when_mail_would_leave_in_the_clear(tmp_path, mail, warned):
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PROD, **mail, "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    output = result.stderr + result.stdout
    assert ("portal.W003" in output) is warned
    assert (result.returncode != 0) is warned


def test_deploy_check_warns_that_the_embedded_database_is_a_local_file(tmp_path):
    without_database = {k: v for k, v in PROD.items() if k != "DATABASE_URL"}

    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**without_database, "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode != 0
    assert "portal.W004" in result.stderr + result.stdout


def test_deploy_check_warns_when_any_host_is_allowed(tmp_path):
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PROD, "ALLOWED_HOSTS": "portal.example.org,*", "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode != 0
    assert "portal.W005" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SIGNIN_ACCOUNT_FAILURE_LIMIT", "0", "at least 1, got 0"),
        ("STOW_MAX_REQUEST_BYTES", "-1", "at least 1, got -1"),
        ("TRUSTED_PROXY_COUNT", "-1", "at least 0, got -1"),
    ],
)
def test_a_limit_below_its_minimum_fails_loudly_at_start(tmp_path, name, value, message):
    result = _run(["manage.py", "check"], {name: value, "SECRET_KEY": STRONG_KEY}, tmp_path)

    assert result.returncode != 0
    assert f"{name} must be {message}" in result.stderr


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"PORTAL_KEY_PROVIDER": "aws_kms"}, "must be local or aws-kms, got 'aws_kms'"),
        ({"PORTAL_KEY_PROVIDER": "aws-kms"}, "aws-kms needs PORTAL_KMS_KEY_ID"),
    ],
)
def test_a_key_provider_that_cannot_work_stops_the_start(tmp_path, environment, message):
    result = _run(
        ["manage.py", "init_master_key"], {**environment, "SECRET_KEY": STRONG_KEY}, tmp_path
    )

    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "master.key").exists()


def test_the_benchmarks_rate_limit_of_zero_starts(tmp_path):
    result = _run(
        ["manage.py", "check"],
        {"API_RATE_LIMIT_PER_MINUTE": "0", "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr


def test_database_and_redis_urls_can_come_from_files(tmp_path):
    (tmp_path / "db").write_text("postgres://portal:s3cret@db.internal:5432/portal\n")
    (tmp_path / "redis").write_text("redis://:s3cret@redis.internal:6379/0\n")
    urls = {k: v for k, v in PROD.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    files = {"DATABASE_URL_FILE": str(tmp_path / "db"), "REDIS_URL_FILE": str(tmp_path / "redis")}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "d = s.DATABASES['default']; "
        "print(d['HOST'], s.CELERY_BROKER_URL, s.CACHES['default']['BACKEND'], "
        "d['OPTIONS']['connect_timeout'], d['CONN_HEALTH_CHECKS'])"
    )

    result = _run(
        ["-c", code],
        {**urls, **files, "SECRET_KEY": STRONG_KEY, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    host, broker, cache, connect_timeout, health_checks = result.stdout.split()
    assert host == "db.internal" and broker == "redis://:s3cret@redis.internal:6379/0"
    assert cache.endswith("RedisCache")
    assert (connect_timeout, health_checks) == ("5", "True")  # an outage fails in seconds


def test_both_mail_tls_modes_at_once_is_refused_at_start(tmp_path):
    result = _run(
        ["manage.py", "check"],
        {**PROD, "EMAIL_USE_TLS": "1", "EMAIL_USE_SSL": "1", "SECRET_KEY": STRONG_KEY},
        tmp_path,
    )

    assert result.returncode != 0
    assert "portal.E003" in result.stderr + result.stdout


def test_missing_secret_key_fails_loudly_at_start(tmp_path):
    result = _run(["manage.py", "check"], PROD, tmp_path)

    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


def test_secret_key_from_file(tmp_path):
    key_file = tmp_path / "secret"
    key_file.write_text(STRONG_KEY + "\n")

    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PROD, "SECRET_KEY_FILE": str(key_file)},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr


def test_malformed_boolean_fails_loudly(tmp_path):
    result = _run(["manage.py", "check"], {"DEBUG": "maybe", "SECRET_KEY": STRONG_KEY}, tmp_path)

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_production_security_settings(tmp_path):
    probe = (
        "import json, django, os;"
        "os.environ['DJANGO_SETTINGS_MODULE']='portal.settings';django.setup();"
        "from django.conf import settings as s;"
        "print(json.dumps({k: getattr(s, k) for k in ["
        "'SECURE_SSL_REDIRECT','SESSION_COOKIE_SECURE','CSRF_COOKIE_SECURE',"
        "'SECURE_HSTS_SECONDS','SECURE_HSTS_INCLUDE_SUBDOMAINS','SESSION_COOKIE_HTTPONLY',"
        "'X_FRAME_OPTIONS','SECURE_REFERRER_POLICY','SECURE_CONTENT_TYPE_NOSNIFF','DEBUG',"
        "'FILE_UPLOAD_HANDLERS']}))"
    )

    result = _run(["-c", probe], {**PROD, "SECRET_KEY": STRONG_KEY}, tmp_path)

    values = json.loads(result.stdout)
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert values["SESSION_COOKIE_HTTPONLY"]
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["SECURE_REFERRER_POLICY"] == "same-origin"
    assert values["SECURE_CONTENT_TYPE_NOSNIFF"]
    assert not any("TemporaryFile" in handler for handler in values["FILE_UPLOAD_HANDLERS"])


def test_database_url_selects_the_database(tmp_path):
    probe = (
        "import django, os;os.environ['DJANGO_SETTINGS_MODULE']='portal.settings';django.setup();"
        "from django.conf import settings as s;d=s.DATABASES['default'];"
        "print(d['ENGINE'], d['NAME'], d['HOST'])"
    )

    result = _run(
        ["-c", probe],
        {**PROD, "SECRET_KEY": STRONG_KEY, "DATABASE_URL": "postgres://u:p@db.internal:5432/pacs"},
        tmp_path,
    )

    assert result.stdout.split() == ["django.db.backends.postgresql", "pacs", "db.internal"]


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_except_health_probes(settings, client):
    settings.SECURE_SSL_REDIRECT = True

    page = client.get("/accounts/login/")
    probe = client.get("/healthz")

    assert page.status_code == 301
    assert page["Location"] == "https://testserver/accounts/login/"
    assert probe.status_code == 200


def test_env_helpers(monkeypatch, tmp_path):
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "12")
    monkeypatch.setenv("X_LIST", "a.example, b.example,")
    monkeypatch.setenv("X_BAD_INT", "twelve")
    secret_file = tmp_path / "s"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret_file))

    assert env.env_bool("X_BOOL") is True
    assert env.env_bool("X_MISSING", default=True) is True
    assert env.env_int("X_INT", 1) == 12
    assert env.env_int("X_INT", 1, minimum=12) == 12
    with pytest.raises(ImproperlyConfigured, match="X_INT must be at least 13, got 12"):
        env.env_int("X_INT", 1, minimum=13)
    assert env.env_list("X_LIST") == ["a.example", "b.example"]
    assert env.env_secret("X_SECRET") == "from-file"
    with pytest.raises(ImproperlyConfigured, match="X_BAD_INT must be an integer"):
        env.env_int("X_BAD_INT", 1)
    monkeypatch.setenv("X_SECRET", "inline")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        env.env_secret("X_SECRET")
    monkeypatch.setenv("X_NOFILE_FILE", str(tmp_path / "absent"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_secret("X_NOFILE")


def test_temporary_file_upload_handler_is_refused(settings):
    from portal.checks import check_upload_handlers

    settings.FILE_UPLOAD_HANDLERS = [
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]

    assert [error.id for error in check_upload_handlers(None)] == ["portal.E001"]


def test_the_wsgi_entry_point_loads_every_view_and_freezes_the_start_up_heap(tmp_path):
    script = (
        "import gc, sys, portal.wsgi\n"
        "print(gc.get_freeze_count(), 'imaging.dicomweb.views' in sys.modules,\n"
        "      type(portal.wsgi.application).__name__)"
    )

    result = _run(["-c", script], {**PROD, "SECRET_KEY": STRONG_KEY}, tmp_path)

    assert result.returncode == 0, result.stderr
    frozen, views_loaded, handler = result.stdout.split()
    assert int(frozen) > 10_000  # objects the collector no longer walks
    assert views_loaded == "True"
    assert handler == "PortalWSGIHandler"  # refuses a Content-Type Django cannot parse
