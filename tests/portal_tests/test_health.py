"""Health probes: /healthz is liveness, /readyz names the dependency that is down."""

from __future__ import annotations

import pytest

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
    assert response.json()["checks"] == {"database": "ok", "storage": "ok", "broker": "ok"}


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
