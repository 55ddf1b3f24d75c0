"""Health probes: /healthz is liveness, /readyz names the dependency that is down."""

from __future__ import annotations

import base64

import pytest

from imaging.keys import key_provider_reset
from portal.celery import app as celery_app


@pytest.mark.django_db
def test_healthz_answers_when_the_process_is_up(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


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
