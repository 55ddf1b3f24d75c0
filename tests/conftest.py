"""Role-named fixtures. Two clinics: `clinic` (ours) and `other_clinic` (the outsider's)."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.models import User
from tests.helpers import IN_CI, free_port, make_clinic, make_member, verified_client


def pytest_sessionstart(session: pytest.Session) -> None:
    import os

    if IN_CI and not os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql")):
        pytest.exit("CI=true but DATABASE_URL is not PostgreSQL: the suite must run on it", 3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A transactional test flushes the database after itself, and migrations' data
    # (content types, roles) is then made again under new ids; the next test that
    # restores the serialized contents collides with it. Every one restores them.
    unserialized = [
        item.nodeid
        for item in items
        if (marker := item.get_closest_marker("django_db"))
        and marker.kwargs.get("transaction")
        and not marker.kwargs.get("serialized_rollback")
    ]
    if unserialized:
        raise pytest.UsageError(
            "transactional tests need serialized_rollback=True: " + ", ".join(unserialized)
        )


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server on loopback (moto in server mode) for the session."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.helpers import require_service

    moto = Path(sys.executable).with_name("moto_server")
    require_service("S3 server", moto.exists(), "install the dev extra (moto[server])")
    port = free_port()
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """On SQLite, a test database in a file, as the embedded default runs.

    Django's default in-memory test database shares one cache between threads and
    fails concurrent requests of the live server at once ("database table is locked")
    instead of waiting like a real SQLite file does.
    """
    from django.db import connections

    database = connections["default"].settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database["TEST"]["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(autouse=True, scope="session")
def _plain_http_test_server():
    """Test clients and the live server speak HTTP; the HTTPS redirect has its own test.

    Session-scoped and set before any server starts: SecurityMiddleware reads the
    setting once, when a handler is built.
    """
    from django.conf import settings

    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture
def clinic(db):
    return make_clinic("north", "North Imaging")


@pytest.fixture
def other_clinic(db):
    return make_clinic("south", "South Radiology")


@pytest.fixture
def tenant_admin(clinic) -> User:
    return make_member(clinic, "tenant_admin")


@pytest.fixture
def radiologist(clinic) -> User:
    return make_member(clinic, "radiologist")


@pytest.fixture
def technologist(clinic) -> User:
    return make_member(clinic, "technologist")


@pytest.fixture
def front_desk(clinic) -> User:
    return make_member(clinic, "front_desk")


@pytest.fixture
def referring_physician(clinic) -> User:
    return make_member(clinic, "referring_physician")


@pytest.fixture
def privacy_officer(clinic) -> User:
    return make_member(clinic, "privacy_officer")


@pytest.fixture
def patient(clinic) -> User:
    return make_member(clinic, "patient")


@pytest.fixture
def other_tenant_admin(other_clinic) -> User:
    return make_member(other_clinic, "tenant_admin")


@pytest.fixture
def other_tenant_all_roles(other_clinic) -> User:
    """The most privileged outsider: every role in the other clinic."""
    return make_member(
        other_clinic,
        "tenant_admin",
        "radiologist",
        "technologist",
        "front_desk",
        "referring_physician",
        "privacy_officer",
        "patient",
        email="everything@south.example",
    )


@pytest.fixture
def platform_operator(db) -> User:
    return User.objects.create_superuser(email="operator@platform.example", password="x" * 20)


@pytest.fixture
def client_for():
    """A client signed in with password and second factor, as after the real flow."""
    return verified_client


@pytest.fixture
def password_only_client_for():
    """A client past the password step only."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture(autouse=True)
def _tasks_run_inline():
    """Tasks run in-process unless a test starts a real worker (see test_celery)."""
    from portal.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _fresh_throttles():
    from django.core.cache import cache

    from portal.views import readiness_reset

    cache.clear()
    readiness_reset()  # /readyz answers from its last checks for a few seconds
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Every test gets its own object store, spool and master key under tmp_path."""
    import base64

    from imaging.keyring import keyring_forget
    from imaging.keys import key_provider_reset

    root = tmp_path / "portal-data"
    settings.PORTAL_DATA_DIR = root
    settings.PORTAL_STORAGE_ROOT = root / "objects"
    settings.PORTAL_SPOOL_DIR = root / "spool"
    settings.AUDIT_CHECKPOINT_ROOT = root / "audit-checkpoints"
    settings.PORTAL_MASTER_KEY = base64.b64encode(b"k" * 32).decode()
    from audit.keys import audit_key_forget

    key_provider_reset()
    keyring_forget()
    audit_key_forget()
    yield root
    key_provider_reset()
    keyring_forget()
    audit_key_forget()
