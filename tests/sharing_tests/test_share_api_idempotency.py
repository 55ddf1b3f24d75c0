"""POST /api/v1/shares with an Idempotency-Key: a partner's retry makes no second link."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.conf import settings
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from audit.models import Action, AuditEvent
from imaging.models import Study
from sharing.idempotency import SHARE_REQUEST_HOURS, share_requests_purge
from sharing.models import ShareLink, ShareRequest
from tests.helpers import require_postgresql
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_share_api import api, body, token_for

WAIT_SECONDS = 20


def post(client: Client, data: dict, key: str | None = "order-4711"):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/shares", data, "application/json", **headers)


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane"))


@pytest.fixture
def partner(study):
    return api(token_for(study.tenant, "shares:write", "dicomweb:read"))


def test_a_retry_under_the_same_key_gets_the_first_link_and_makes_no_second(
    study, partner, django_capture_on_commit_callbacks
):
    data = body(study, pin="2468", recipient_email="doctor@example.org")

    with django_capture_on_commit_callbacks(execute=True):
        first = post(partner, data)
        retry = post(partner, data)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert ShareLink.objects.for_tenant(study.tenant).count() == 1
    assert [message.to for message in mail.outbox] == [["doctor@example.org"]]
    recipient = Client()
    opened = recipient.get("/s/" + retry.json()["url"].rsplit("/", 1)[1], follow=True)
    assert opened.status_code == 200 and "PIN" in opened.content.decode()
    events = AuditEvent.objects.for_tenant(study.tenant)
    assert events.filter(action=Action.SHARE_CREATED).count() == 1
    shown_again = events.filter(action=Action.API_READ).get()
    assert shown_again.detail == {
        "resource": "shares",
        "shares": [first.json()["id"]],
        "replayed": True,
    }


def test_the_key_may_be_sent_as_a_structured_field_string(study, partner):
    data = body(study)

    first = post(partner, data, key="order-4711")
    retry = post(partner, data, key='"order-4711"')

    assert retry.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "change",
    [
        {"pin": "1357"},
        {"max_uses": 3},
        {"allow_download": True},
        {"recipient_email": "other@example.org"},
        {"expires_at": (timezone.now() + dt.timedelta(days=3)).isoformat()},
    ],
)
def test_the_same_key_with_another_request_is_a_422_and_changes_nothing(study, partner, change):
    post(partner, body(study, pin="2468"))

    reused = post(partner, {**body(study, pin="2468"), **change})

    assert reused.status_code == 422
    error = reused.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "different request" in error["message"] and "new key" in error["message"]
    assert ShareLink.objects.for_tenant(study.tenant).count() == 1
    assert not AuditEvent.objects.for_tenant(study.tenant).filter(action=Action.API_READ).exists()


def test_the_same_key_naming_another_study_is_a_422(study, partner):
    other = ingest_study(study.tenant, synthetic_ct(slices=1, size=16, patient_id="P-2"))
    post(partner, body(study))

    reused = post(partner, body(other))

    assert reused.status_code == 422
    assert ShareLink.objects.for_tenant(study.tenant).get().study_id == study.pk


def test_keys_belong_to_their_token(study, partner):
    other_partner = api(token_for(study.tenant, "shares:write", "dicomweb:read"))

    first = post(partner, body(study))
    second = post(other_partner, body(study))

    assert second.status_code == 201 and "Idempotent-Replayed" not in second
    assert second.json()["id"] != first.json()["id"]


def test_another_clinics_token_under_the_same_key_gets_404_and_nothing(
    study, partner, other_clinic
):
    post(partner, body(study))
    outsider = api(token_for(other_clinic, "shares:write", "dicomweb:read"))

    response = post(outsider, body(study))

    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "Not found."}
    assert ShareLink.objects.for_tenant(study.tenant).count() == 1
    assert not ShareRequest.objects.for_tenant(other_clinic).exists()


def test_requests_without_a_key_each_make_a_link(study, partner):
    post(partner, body(study), key=None)
    post(partner, body(study), key=None)

    assert ShareLink.objects.for_tenant(study.tenant).count() == 2
    assert not ShareRequest.objects.for_tenant(study.tenant).exists()


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there", '""'])
def test_a_malformed_key_is_a_400_and_makes_nothing(study, partner, key):
    response = post(partner, body(study), key=key)

    assert response.status_code == 400
    assert "1 to 255 printable ASCII" in response.json()["error"]["fields"]["Idempotency-Key"][0]
    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_a_key_past_its_window_makes_a_new_link(study, partner):
    first = post(partner, body(study))
    ShareRequest.objects.for_tenant(study.tenant).update(
        created_at=timezone.now() - dt.timedelta(hours=SHARE_REQUEST_HOURS, minutes=1)
    )

    again = post(partner, body(study))

    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert again.json()["id"] != first.json()["id"]
    assert str(ShareRequest.objects.for_tenant(study.tenant).get().share_id) == again.json()["id"]


def test_the_purge_forgets_requests_past_their_window_only(study, partner):
    data = body(study)
    old = post(partner, data, key="old").json()["id"]
    post(partner, data, key="recent")
    now = timezone.now()
    ShareRequest.objects.for_tenant(study.tenant).filter(share_id=old).update(
        created_at=now - dt.timedelta(hours=SHARE_REQUEST_HOURS, seconds=1)
    )

    purged = share_requests_purge(now=now)

    assert purged == 1
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "sharing.tasks.share_requests_purge" in scheduled
    kept = ShareRequest.objects.for_tenant(study.tenant).get()
    assert post(partner, data, key="recent").json()["id"] == str(kept.share_id)


def test_the_stored_request_keeps_no_key_pin_or_link_in_clear(study, partner):
    created = post(partner, body(study, pin="24681357"), key="order-4711").json()

    row = ShareRequest.objects.for_tenant(study.tenant).get()

    stored = f"{row.key_sha256}{row.request_mac}".encode() + bytes(row.token_wrapped)
    token = created["url"].rsplit("/", 1)[1].encode()
    assert b"order-4711" not in stored and b"24681357" not in stored and token not in stored


def _someone_waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_retry_sent_while_the_first_is_under_way_waits_and_replays_it(clinic):
    """The client gave up waiting and sent again; the first request had not yet committed."""
    require_postgresql()
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    raw = token_for(clinic, "shares:write", "dicomweb:read")
    data = body(study)
    responses = []

    def send() -> None:
        try:
            responses.append(post(api(raw), data))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    with transaction.atomic():
        # Hold the study's row as another link being made would, so both requests queue.
        Study.objects.for_tenant(clinic).select_for_update().filter(pk=study.pk).first()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while _someone_waits_for_a_lock() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    for thread in threads:
        thread.join(WAIT_SECONDS)

    assert sorted(response.status_code for response in responses) == [201, 201]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert sum("Idempotent-Replayed" in response for response in responses) == 1
    assert ShareLink.objects.for_tenant(clinic).count() == 1
