"""Oversight of share links: the privacy officer sees and revokes every live link of the
clinic, whoever made it; a revoked token and a member who left take their links along;
an address too long for the email column is refused with a reason, never a 500."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.validators import validate_email
from django.test import Client
from django.utils import timezone

from audit.models import Action, ActorType, AuditEvent
from sharing.forms import PatientInviteForm
from sharing.models import ShareLink
from sharing.services import (
    ShareInvalid,
    share_create,
    share_revoke,
    shares_revoke_created_by,
)
from tenants.models import ApiToken
from tenants.services import membership_update
from tenants.tokens import api_token_create, api_token_revoke
from tests.helpers import TEST_ACTOR, make_member, membership_of, page_body, sharer
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_links_follow_access import linked_patient

PIN = "4711"
# 264 characters, valid by every other rule: the local part and each label within limits.
LONG_EMAIL = "a" * 64 + "@" + ".".join(["b" * 63] * 3) + ".example"


@pytest.fixture
def study(clinic):
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane"))


@pytest.fixture
def patient(study, front_desk):
    """The study's patient, with a portal account from which they may share it."""
    return linked_patient(study, front_desk)


@pytest.fixture
def other_study(other_clinic):
    return ingest_study(other_clinic, synthetic_ct(slices=1, size=16, patient_name="Roe^John"))


def partner_token(tenant, name: str = "partner") -> tuple[ApiToken, str]:
    return api_token_create(
        tenant=tenant,
        name=name,
        scopes=["shares:write", "dicomweb:read"],
        actor=TEST_ACTOR,
        now=timezone.now(),
    )


def partner_link(raw: str, study) -> tuple[str, str]:
    """A link made through the partner API, without PIN and with download: (id, token)."""
    response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").post(
        "/api/v1/shares",
        {
            "study_instance_uid": study.study_uid,
            "expires_at": (timezone.now() + dt.timedelta(days=2)).isoformat(),
            "allow_download": True,
        },
        "application/json",
    )
    assert response.status_code == 201
    return response.json()["id"], response.json()["url"].rsplit("/", 1)[1]


def member_link(study, user, **options) -> tuple[ShareLink, str]:
    return share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(user, study.tenant),
        challenge=ShareLink.Challenge.PIN,
        pin=PIN,
        **options,
    )


def opens(token: str) -> bool:
    return Client().get(f"/s/{token}").status_code == 303


def deactivate(user, tenant) -> None:
    membership = membership_of(user, tenant)
    membership_update(
        membership=membership, roles=membership.role_codes, is_active=False, actor=TEST_ACTOR
    )


def revocations(tenant) -> dict[str, AuditEvent]:
    events = AuditEvent.objects.for_tenant(tenant).filter(action=Action.SHARE_REVOKED)
    return {event.detail["share"]: event for event in events}


# --- A revoked token's links ----------------------------------------------------------------


def test_revoking_a_token_revokes_its_live_links_each_audited(clinic, study):
    token, raw = partner_token(clinic)
    first_id, first = partner_link(raw, study)
    second_id, second = partner_link(raw, study)
    _, other_raw = partner_token(clinic, name="other partner")
    _, kept = partner_link(other_raw, study)

    api_token_revoke(token=token, actor=TEST_ACTOR, now=timezone.now())

    assert not opens(first) and not opens(second)
    assert opens(kept)
    events = revocations(clinic)
    assert set(events) == {first_id, second_id}
    assert {e.detail["reason"] for e in events.values()} == {"token_revoked"}


def test_a_token_revoked_in_the_admin_takes_its_links_along(
    clinic, study, tenant_admin, other_tenant_admin, client_for
):
    token, raw = partner_token(clinic)
    _, link = partner_link(raw, study)
    revoke = {"action": "revoke", "index": "0", "_selected_action": [str(token.pk)]}

    outsider = client_for(other_tenant_admin)
    in_their_clinic = outsider.post("/t/south/admin/tenants/apitoken/", revoke)
    in_ours = outsider.post("/t/north/admin/tenants/apitoken/", revoke)
    still_opens = opens(link)
    client_for(tenant_admin).post("/t/north/admin/tenants/apitoken/", revoke)

    assert in_their_clinic.status_code == 302 and in_ours.status_code == 404
    assert still_opens
    assert not opens(link)
    assert ApiToken.objects.for_tenant(clinic).get().revoked_at is not None


def test_a_link_cannot_be_made_with_a_token_revoked_meanwhile(clinic, study):
    token, _ = partner_token(clinic)
    api_token_revoke(token=token, actor=TEST_ACTOR, now=timezone.now())

    with pytest.raises(ShareInvalid, match="no longer valid"):
        share_create(
            study=study,
            actor=TEST_ACTOR,
            now=timezone.now(),
            created_by_token=token,
            challenge=ShareLink.Challenge.NONE,
        )

    assert not ShareLink.objects.for_tenant(clinic).exists()


# --- A member who left ----------------------------------------------------------------------


def test_revoking_a_members_links_takes_only_theirs_in_that_clinic(
    clinic, other_clinic, study, other_study, radiologist
):
    colleague = make_member(clinic, "radiologist", email="colleague@north.example")
    make_member(other_clinic, "radiologist", email=radiologist.email)
    mine, mine_token = member_link(study, radiologist)
    _, theirs = member_link(study, colleague)
    _, elsewhere = member_link(other_study, radiologist)

    count = shares_revoke_created_by(
        tenant=clinic, user=radiologist, actor=TEST_ACTOR, now=timezone.now()
    )

    assert count == 1
    assert not opens(mine_token)
    assert opens(theirs) and opens(elsewhere)
    assert revocations(clinic)[str(mine.pk)].detail["reason"] == "creator_deactivated"


# --- The privacy officer's oversight --------------------------------------------------------


def test_privacy_officer_lists_every_live_link_of_the_clinic_without_demographics(
    clinic, other_clinic, study, other_study, privacy_officer, radiologist, patient, client_for
):
    _, raw = partner_token(clinic)
    by_token, _ = partner_link(raw, study)
    by_departed, _ = member_link(study, radiologist)
    deactivate(radiologist, clinic)
    by_patient, _ = member_link(study, patient)
    revoked, _ = member_link(study, patient)
    share_revoke(share=revoked, actor=TEST_ACTOR, now=timezone.now())
    expired, _ = member_link(study, patient)
    ShareLink.objects.for_tenant(clinic).filter(pk=expired.pk).update(
        created_at=timezone.now() - dt.timedelta(days=3),
        expires_at=timezone.now() - dt.timedelta(seconds=1),
    )
    member_link(other_study, make_member(other_clinic, "radiologist"))

    response = client_for(privacy_officer).get("/t/north/shares/live/")

    assert response.status_code == 200
    listed = {str(row["share"].pk) for row in response.context["rows"]}
    assert listed == {by_token, str(by_departed.pk), str(by_patient.pk)}
    page = response.content.decode()
    assert "API token “partner”" in page and radiologist.email in page
    assert "Doe, Jane" not in page and "Study details hidden" in page
    assert patient.email not in page and "The patient (patient portal)" in page
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.SHARES_LISTED)
    assert event.detail["scope"] == "clinic" and set(event.detail["shares"]) == listed


@pytest.mark.parametrize(
    ("url", "maker_role"), [("/t/north/shares/live/", "privacy"), ("/t/north/shares/", "own")]
)
def test_link_lists_go_a_page_at_a_time_each_page_audited_for_its_links(
    monkeypatch,
    clinic,
    other_clinic,
    study,
    other_study,
    privacy_officer,
    radiologist,
    client_for,
    url,
    maker_role,
):
    monkeypatch.setattr("sharing.views.LINKS_PAGE_SIZE", 2)
    oldest, newer, newest = (member_link(study, radiologist)[0] for _ in range(3))
    member_link(other_study, make_member(other_clinic, "radiologist"))
    client = client_for(privacy_officer if maker_role == "privacy" else radiologist)

    first = client.get(url)
    second = client.get(url + "?page=2")
    beyond = client.get(url + "?page=9")

    def shown(response):
        return [row["share"].pk for row in response.context["rows"]]

    assert shown(first) == [newest.pk, newer.pk]
    assert shown(second) == [oldest.pk]
    assert shown(beyond) == [oldest.pk]  # the last page, not an error
    assert "Page 1 of 2" in first.content.decode()
    events = AuditEvent.objects.for_tenant(clinic).filter(action=Action.SHARES_LISTED)
    assert [e.detail["shares"] for e in events.order_by("seq")] == [
        [str(newest.pk), str(newer.pk)],
        [str(oldest.pk)],
        [str(oldest.pk)],
    ]


@pytest.mark.parametrize("maker", ["token", "departed", "patient"])
def test_privacy_officer_revokes_a_link_nobody_else_could(
    clinic, study, radiologist, patient, privacy_officer, client_for, maker
):
    if maker == "token":
        share_id, link = partner_link(partner_token(clinic)[1], study)
    else:
        share, link = member_link(study, radiologist if maker == "departed" else patient)
        share_id = str(share.pk)
        if maker == "departed":
            deactivate(radiologist, clinic)
    client = client_for(privacy_officer)

    detail = client.get(f"/t/north/shares/{share_id}/")
    revoke = client.post(f"/t/north/shares/{share_id}/revoke/")

    assert detail.status_code == 200
    assert patient.email.encode() not in page_body(detail)  # a patient's address is not shown
    assert revoke.status_code == 302 and revoke["Location"] == f"/t/north/shares/{share_id}/"
    assert client.get(revoke["Location"]).status_code == 200
    assert not opens(link)
    event = revocations(clinic)[share_id]
    assert (event.actor_type, event.actor_id) == (ActorType.USER, str(privacy_officer.pk))


def test_another_clinics_link_is_the_same_404_as_a_missing_one(
    clinic, other_clinic, study, radiologist, client_for
):
    share, link = member_link(study, radiologist)
    outsider = client_for(make_member(other_clinic, "privacy_officer"))
    missing = "00000000-0000-0000-0000-000000000000"

    foreign_detail = outsider.get(f"/t/south/shares/{share.pk}/")
    missing_detail = outsider.get(f"/t/south/shares/{missing}/")
    foreign_revoke = outsider.post(f"/t/south/shares/{share.pk}/revoke/")
    missing_revoke = outsider.post(f"/t/south/shares/{missing}/revoke/")
    their_list = outsider.get("/t/south/shares/live/")
    our_clinic = outsider.get("/t/north/shares/live/")

    assert foreign_detail.status_code == missing_detail.status_code == 404
    assert page_body(foreign_detail) == page_body(missing_detail).replace(
        missing.encode(), str(share.pk).encode()
    )
    assert foreign_revoke.status_code == missing_revoke.status_code == 404
    assert their_list.status_code == 200 and their_list.context["rows"] == []
    assert our_clinic.status_code == 404
    assert opens(link)


@pytest.mark.parametrize("role", ["radiologist", "tenant_admin", "front_desk", "patient"])
def test_oversight_is_the_privacy_officers_alone(clinic, study, client_for, request, role):
    sharer = make_member(clinic, "radiologist", email="sharer@north.example")
    share, link = member_link(study, sharer)
    client = client_for(request.getfixturevalue(role))

    listing = client.get("/t/north/shares/live/")
    revoke = client.post(f"/t/north/shares/{share.pk}/revoke/")

    assert listing.status_code == 403
    assert revoke.status_code in (403, 404)
    assert opens(link)


# --- Addresses too long for the column ------------------------------------------------------


def test_the_long_address_is_valid_but_for_its_length():
    validate_email(LONG_EMAIL)

    assert 254 < len(LONG_EMAIL) <= 320


def test_share_form_refuses_an_address_too_long(
    clinic, study, radiologist, other_tenant_all_roles, client_for
):
    form = {"expires_days": 7, "challenge": "pin", "pin": "123456", "recipient_email": LONG_EMAIL}

    response = client_for(radiologist).post(f"/t/north/studies/{study.pk}/share/", form)
    outsider = client_for(other_tenant_all_roles).post(f"/t/north/studies/{study.pk}/share/", form)

    assert response.status_code == 400
    assert "An email address has at most 254 characters." in response.content.decode()
    assert outsider.status_code == 404
    assert not ShareLink.objects.for_tenant(clinic).exists()


def test_share_api_refuses_an_address_too_long(clinic, other_clinic, study):
    body = {
        "study_instance_uid": study.study_uid,
        "expires_at": (timezone.now() + dt.timedelta(days=2)).isoformat(),
        "recipient_email": LONG_EMAIL,
    }

    response = Client(HTTP_AUTHORIZATION=f"Bearer {partner_token(clinic)[1]}").post(
        "/api/v1/shares", body, "application/json"
    )
    outsider = Client(HTTP_AUTHORIZATION=f"Bearer {partner_token(other_clinic)[1]}").post(
        "/api/v1/shares", {**body, "recipient_email": ""}, "application/json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["recipient_email"] == [
        "An email address has at most 254 characters."
    ]
    assert outsider.status_code == 404
    assert not ShareLink.objects.for_tenant(clinic).exists()


def test_share_service_refuses_an_address_too_long(clinic, study, radiologist):
    with pytest.raises(ShareInvalid, match="at most 254 characters"):
        member_link(study, radiologist, recipient_email=LONG_EMAIL)

    assert not ShareLink.objects.for_tenant(clinic).exists()


def test_patient_invite_form_refuses_an_address_too_long():
    form = PatientInviteForm({"email": LONG_EMAIL, "patients": ["p"]}, records=[("p", "P")])

    valid = form.is_valid()

    assert not valid
    assert form.errors["email"] == ["An email address has at most 254 characters."]
