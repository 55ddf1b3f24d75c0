"""Health probes: /healthz is liveness, /readyz names the dependency that is down."""

from __future__ import annotations

import base64

import pytest
from django.test import Client

from imaging.keys import key_provider_reset
from portal.celery import app as celery_app


@pytest.mark.django_db
def test_healthz_answers_when_the_process_is_up(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_a_probe_by_address_is_answered_and_logs_no_error(path, settings, tmp_path, caplog):
    settings.ALLOWED_HOSTS = ["portal.example.org"]
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    client = Client(raise_request_exception=False)

    probe = client.get(path, HTTP_HOST="10.0.3.17:8000")
    page = client.get("/accounts/login/", HTTP_HOST="10.0.3.17:8000")

    assert probe.status_code == 200
    assert probe["X-Content-Type-Options"] == "nosniff"  # the headers middleware still ran
    assert page.status_code == 400  # only the probes are answered for any host
    assert [r.name for r in caplog.records if r.name.startswith("django.security")] == [
        "django.security.DisallowedHost"
    ]


@pytest.mark.django_db
def test_readyz_is_ok_when_everything_is_reachable(client, settings, tmp_path):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"

    response = client.get("/readyz")

    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {
        "database": "ok",
        "storage": "ok",
        "keys": "ok",
        "broker": "ok",
    }


@pytest.mark.django_db
def test_readyz_makes_a_missing_storage_root_private(client, settings, tmp_path):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "var" / "objects"

    client.get("/readyz")

    assert (tmp_path / "var" / "objects").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / "var" / "objects").iterdir()) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "master_key", ["not base64!", base64.b64encode(b"short").decode()], ids=["garbled", "short"]
)
def test_readyz_names_a_master_key_it_cannot_use(client, settings, tmp_path, master_key):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    settings.PORTAL_MASTER_KEY = master_key
    key_provider_reset()
    try:
        response = client.get("/readyz")
    finally:
        key_provider_reset()

    assert response.status_code == 503
    assert response.json()["failing"] == ["keys"]
    assert "base64" not in response.content.decode()  # the reason stays in the log


@pytest.mark.django_db
def test_readyz_names_unwritable_storage(client, settings, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    settings.PORTAL_STORAGE_ROOT = not_a_dir

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["storage"]
    assert "Traceback" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_names_an_unreachable_broker(client, settings, tmp_path):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    original = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/readyz")
    finally:
        celery_app.conf.broker_url = original

    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]
    assert response.json()["checks"]["database"] == "ok"


def _counted(monkeypatch, name: str, *, fails: bool = False) -> list[int]:
    """Replace one readiness check by one that counts its runs (and fails if asked)."""
    from portal import views

    runs: list[int] = []

    def check() -> None:
        runs.append(1)
        if fails:
            raise ConnectionError("endpoint said something")

    monkeypatch.setitem(views.READINESS_CHECKS, name, check)
    return runs


@pytest.mark.django_db
def test_probes_within_seconds_of_each_other_share_one_run_of_the_checks(
    client, settings, tmp_path, monkeypatch
):
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    runs = _counted(monkeypatch, "keys")  # each run a KMS Encrypt and Decrypt

    answers = [client.get("/readyz").status_code for _ in range(20)]

    assert answers == [200] * 20
    assert len(runs) == 1


@pytest.mark.django_db
def test_a_check_failing_on_every_probe_is_logged_once_a_minute_without_its_message(
    client, settings, tmp_path, monkeypatch, caplog
):
    from portal import views

    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    monkeypatch.setattr(views, "READINESS_CACHE_SECONDS", 0.0)
    runs = _counted(monkeypatch, "broker", fails=True)

    with caplog.at_level("ERROR", logger="portal.views"):
        answers = [client.get("/readyz").status_code for _ in range(5)]

    assert answers == [503] * 5 and len(runs) == 5
    (record,) = [r for r in caplog.records if r.name == "portal.views"]
    assert "broker" in record.getMessage() and "ConnectionError" in record.getMessage()
    assert "said something" not in record.getMessage() and record.exc_info is None


@pytest.mark.django_db
@pytest.mark.timeout(60)
def test_a_stalled_bucket_endpoint_is_unavailable_after_one_bounded_try(clinic, settings, tmp_path):
    import socket
    import threading

    from imaging import storage as storage_module

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # takes connections and never answers
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    settings.PORTAL_STORAGE_ROOT = tmp_path / "objects"
    settings.STORAGE_S3_ENDPOINT_URL = f"http://127.0.0.1:{listener.getsockname()[1]}"
    settings.STORAGE_S3_ACCESS_KEY_ID, settings.STORAGE_S3_SECRET_ACCESS_KEY = "k", "s"
    clinic.storage_backend, clinic.storage_bucket = clinic.StorageBackend.S3, "stalled"
    clinic.save()
    storage_module._s3_storage.cache_clear()
    try:
        response = Client().get("/readyz")
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
        storage_module._s3_storage.cache_clear()

    assert response.status_code == 503 and response.json()["failing"] == ["storage"]
    assert len(accepted) == 1  # one try, not botocore's five
