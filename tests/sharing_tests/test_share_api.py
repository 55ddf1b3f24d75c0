"""Partner API: POST/GET/DELETE /api/v1/shares with the shares:write scope."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import Action, ActorType, AuditEvent
from imaging.services import study_set_confidential
from sharing.models import ShareLink
from tenants.models import ApiToken
from tenants.tokens import api_token_create
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import ingest_study, synthetic_ct


def token_for(tenant, *scopes: str) -> str:
    _, raw = api_token_create(
        tenant=tenant, name="partner", scopes=list(scopes), actor=TEST_ACTOR, now=timezone.now()
    )
    return raw


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane"))


def api(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def body(study, **extra):
    return {
        "study_instance_uid": study.study_uid,
        "expires_at": (timezone.now() + dt.timedelta(days=2)).isoformat(),
        **extra,
    }


def test_create_list_and_revoke(study):
    client = api(token_for(study.tenant, "shares:write", "dicomweb:read"))

    created = client.post(
        "/api/v1/shares",
        body(study, pin="2468", max_uses=2, allow_download=True),
        "application/json",
    )
    listed = client.get("/api/v1/shares")
    share_id = created.json()["id"]
    deleted = client.delete(f"/api/v1/shares/{share_id}")

    assert created.status_code == 201
    data = created.json()
    assert data["url"].startswith("http://testserver/s/") and data["challenge"] == "pin"
    assert data["max_uses"] == 2 and data["allow_download"] is True and data["status"] == "active"
    rows = listed.json()["results"]
    assert [row["id"] for row in rows] == [share_id] and rows[0]["url"] is None
    assert deleted.status_code == 204
    recipient = Client()
    assert recipient.get("/s/" + data["url"].rsplit("/", 1)[1]).status_code == 404
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_CREATED)
    assert event.actor_type == ActorType.API_TOKEN


def test_a_token_that_may_not_read_images_makes_no_link(study):
    """A link shows the study to whoever opens it, the token's own system included."""
    older = token_for(study.tenant, "shares:write", "dicomweb:read")
    # As tokens were given before shares:write needed dicomweb:read (tenants.tokens).
    ApiToken.objects.for_tenant(study.tenant).update(scopes=["shares:write"])
    refused = api(older).post("/api/v1/shares", body(study), "application/json")
    reader = api(token_for(study.tenant, "shares:write", "dicomweb:read"))
    view_only = reader.post("/api/v1/shares", body(study), "application/json")
    download = reader.post("/api/v1/shares", body(study, allow_download=True), "application/json")

    assert refused.status_code == 400
    assert "dicomweb:read" in refused.json()["error"]["fields"]["non_field_errors"][0]
    assert view_only.status_code == 201 and view_only.json()["allow_download"] is False
    assert download.status_code == 201 and download.json()["allow_download"] is True
    assert ShareLink.objects.for_tenant(study.tenant).count() == 2


def test_link_without_pin_opens_with_the_open_button(study):
    created = api(token_for(study.tenant, "shares:write", "dicomweb:read")).post(
        "/api/v1/shares", body(study), "application/json"
    )
    recipient = Client()

    recipient.get("/s/" + created.json()["url"].rsplit("/", 1)[1])
    opened = recipient.post("/s/")

    assert opened.status_code == 303
    assert "Doe, Jane" in recipient.get("/s/").content.decode()


def test_scope_is_required(study):
    response = api(token_for(study.tenant, "studies:read")).post(
        "/api/v1/shares", body(study), "application/json"
    )

    assert response.status_code == 403
    assert response.json()["error"]["message"] == "This token lacks the shares:write scope."
    assert not ShareLink.objects.for_tenant(study.tenant).exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"pin": "12"}, "pin"),
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": 2**31}, "max_uses"),  # beyond the column on PostgreSQL
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"recipient_email": "not-an-email"}, "recipient_email"),
        # Types a partner's code got wrong are refused, not coerced.
        ({"max_uses": "\u0663"}, "max_uses"),  # an Arabic-Indic three
        ({"max_uses": 3.0}, "max_uses"),
        ({"max_uses": "3.0"}, "max_uses"),
        ({"max_uses": True}, "max_uses"),
        ({"pin": 123456}, "pin"),  # as a number its leading zeros would be lost
        ({"message": 1.5}, "message"),
        ({"study_instance_uid": 1.2}, "study_instance_uid"),
    ],
)
def test_bad_input_is_a_specific_400_and_creates_nothing(study, extra, field):
    response = api(token_for(study.tenant, "shares:write", "dicomweb:read")).post(
        "/api/v1/shares", body(study, **extra), "application/json"
    )

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not ShareLink.objects.for_tenant(study.tenant).exists()


@pytest.mark.parametrize(
    "document", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000]
)
def test_json_nested_past_the_parsers_depth_is_a_400_not_a_server_error(study, document):
    response = api(token_for(study.tenant, "shares:write", "dicomweb:read")).post(
        "/api/v1/shares", document, "application/json"
    )

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "parse_error",
        "message": "JSON parse error - the document is nested too deeply.",
    }
    assert not ShareLink.objects.for_tenant(study.tenant).exists()


def test_policy_violation_is_a_400(study):
    far = (timezone.now() + dt.timedelta(days=90)).isoformat()

    response = api(token_for(study.tenant, "shares:write", "dicomweb:read")).post(
        "/api/v1/shares", body(study, expires_at=far), "application/json"
    )

    assert response.status_code == 400
    assert "at most 30 days" in str(response.json())


def test_another_clinics_study_and_share_are_404(study, other_clinic):
    outsider = api(token_for(other_clinic, "shares:write", "dicomweb:read"))
    own = api(token_for(study.tenant, "shares:write", "dicomweb:read"))
    share_id = own.post("/api/v1/shares", body(study), "application/json").json()["id"]

    create = outsider.post("/api/v1/shares", body(study), "application/json")
    delete = outsider.delete(f"/api/v1/shares/{share_id}")
    listing = outsider.get("/api/v1/shares")

    assert create.status_code == 404 and delete.status_code == 404
    assert listing.json()["count"] == 0
    assert ShareLink.objects.for_tenant(study.tenant).get().revoked_at is None


def test_the_list_is_paged_newest_first_and_its_read_is_audited(study):
    client = api(token_for(study.tenant, "shares:write", "dicomweb:read"))
    created = [
        client.post("/api/v1/shares", body(study), "application/json").json()["id"]
        for _ in range(3)
    ]

    first = client.get("/api/v1/shares?limit=2").json()
    rest = client.get(first["next"]).json()

    assert first["count"] == 3
    assert [row["id"] for row in first["results"] + rest["results"]] == created[::-1]
    assert rest["next"] is None
    event = AuditEvent.objects.for_tenant(study.tenant).order_by("-seq").first()
    assert event.action == Action.API_READ
    assert event.detail == {
        "resource": "shares",
        "shares": [created[0]],
        "studies": [str(study.pk)],
    }


def test_a_study_made_confidential_since_leaves_the_list_but_its_link_can_be_revoked(
    study, radiologist
):
    plain = api(token_for(study.tenant, "shares:write", "dicomweb:read"))
    cleared = api(token_for(study.tenant, "shares:write", "dicomweb:read", "confidential:read"))
    plain_share = plain.post("/api/v1/shares", body(study), "application/json").json()["id"]
    cleared.post("/api/v1/shares", body(study), "application/json")
    study_set_confidential(study=study, confidential=True, by=radiologist, actor=TEST_ACTOR)

    plain_list = plain.get("/api/v1/shares").json()
    cleared_list = cleared.get("/api/v1/shares").json()
    revoke = plain.delete(f"/api/v1/shares/{plain_share}")

    assert plain_list["count"] == 0 and study.study_uid not in str(plain_list)
    assert cleared_list["results"][0]["study_instance_uid"] == study.study_uid
    assert revoke.status_code == 204
    assert ShareLink.objects.for_tenant(study.tenant).get(pk=plain_share).revoked_at is not None


def test_a_signed_in_member_cannot_use_the_partner_endpoint(client_for, radiologist, study):
    response = client_for(radiologist).get("/api/v1/shares")

    assert response.status_code in (401, 404)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_share_emailed_while_the_broker_is_down_is_created_not_a_500(clinic, caplog):
    from portal.celery import app
    from tests.helpers import celery_broker

    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    app.conf.task_always_eager = False
    try:
        with celery_broker("redis://127.0.0.1:1/0"):
            created = api(token_for(clinic, "shares:write", "dicomweb:read")).post(
                "/api/v1/shares",
                body(study, recipient_email="doctor@example.org"),
                "application/json",
            )
    finally:
        app.conf.task_always_eager = True

    assert created.status_code == 201
    share = ShareLink.objects.for_tenant(clinic).get(pk=created.json()["id"])
    assert share.invitation_sent_at is None
    assert "could not queue sharing.tasks.share_invitation_send" in caplog.text


def test_a_link_made_by_a_token_ends_no_later_than_the_token(study):
    _, raw = api_token_create(
        tenant=study.tenant,
        name="partner",
        scopes=["shares:write", "dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
        expires_days=1,
    )

    created = api(raw).post(
        "/api/v1/shares",
        {**body(study), "expires_at": (timezone.now() + dt.timedelta(days=5)).isoformat()},
        "application/json",
    )

    assert created.status_code == 201
    share = ShareLink.objects.for_tenant(study.tenant).get(pk=created.json()["id"])
    assert share.expires_at == share.created_by_token.expires_at
    assert dt.datetime.fromisoformat(created.json()["expires_at"]) == share.expires_at
    event = AuditEvent.objects.for_tenant(study.tenant).get(action=Action.SHARE_CREATED)
    assert event.detail["capped_by_token_expiry"] is True
