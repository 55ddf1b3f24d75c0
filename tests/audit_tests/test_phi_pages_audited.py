"""Sweep every clinic and share recipient page: one that shows PHI has audited the look.

The pages are enumerated from the URL configuration, as the isolation sweep does, so a
new page that shows PHI without recording it fails here the day it is added.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from django.db import DatabaseError
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from imaging.models import Instance, Series
from sharing.invitations import invitation_accept, patient_invite
from sharing.services import share_create
from tenants.services import user_create
from tests.helpers import PASSWORD, TEST_ACTOR, make_member, sharer, verified_client
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.url_sweep import build_url, clinic_patterns, walk_urls

NAME = "Sweep^Jane"
PATIENT_ID = "PID-SWEEP-77"
# Name, patient id, birth date and accession number, as pages and DICOM JSON show them.
SHOWN = (
    b"Sweep, Jane",
    b"Sweep^Jane",
    PATIENT_ID.encode(),
    b"1970-01-01",
    b"19700101",
    b"ACC-1",
)
# Ids only in the URLs of actions (POST): revoking a grant, an invitation, a portal account.
POST_ONLY_GROUPS = {"user_id", "invitation_id", "link_id"}
# The tenant admin shows no patient data (it manages staff, tokens and settings).
ADMIN_GROUPS = {"app_label", "content_type_id", "object_id", "url"}
# A share's own token: opening it is the redirect to the pages swept, not a page itself.
RECIPIENT_ENTRY_GROUPS = {"token"}


@pytest.fixture
def study(clinic):
    return ingest_study(
        clinic, synthetic_ct(slices=2, size=16, patient_name=NAME, patient_id=PATIENT_ID)
    )


@pytest.fixture
def all_staff_roles(clinic):
    return make_member(
        clinic,
        "radiologist",
        "technologist",
        "front_desk",
        "privacy_officer",
        "tenant_admin",
        email="everything@north.example",
    )


@pytest.fixture
def linked_patient(clinic, study, front_desk):
    invitation = patient_invite(
        tenant=clinic,
        patients=[study.patient],
        email="sweep.jane@example.org",
        invited_by=front_desk,
        actor=TEST_ACTOR,
        now=timezone.now(),
    )
    user = user_create(
        email="sweep.jane@example.org", password=PASSWORD, actor=TEST_ACTOR, tenant=clinic
    )
    invitation_accept(invitation=invitation, user=user, actor=TEST_ACTOR, now=timezone.now())
    return user


def _share(study, user):
    share, _ = share_create(
        study=study, actor=TEST_ACTOR, now=timezone.now(), **sharer(user, study.tenant), pin="2468"
    )
    return share


def _opened_share(study, radiologist, **client_kwargs) -> tuple:
    """A link to `study` allowing downloads, and a browser that opened it (PIN answered)."""
    share, token = share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        **sharer(radiologist, study.tenant),
        pin="2468",
        allow_download=True,
    )
    recipient = Client(**client_kwargs)
    recipient.get(f"/s/{token}")
    assert recipient.post("/s/", {"answer": "2468"}).status_code == 303
    return share, recipient


def recipient_patterns() -> list[tuple[str, str, tuple[str, ...]]]:
    """Every route of the share recipient's side (/s/), from the project's URLs."""
    from portal import urls

    return [entry for entry in walk_urls(urls.urlpatterns) if entry[1].startswith("s/")]


def _values(study, share) -> dict[str, str]:
    instance = Instance.objects.for_tenant(study.tenant).filter(study=study).first()
    return {
        "tenant_slug": study.tenant.slug,
        "study_id": str(study.pk),
        "patient_id": str(study.patient_id),
        "share_id": str(share.pk),
        "study": study.study_uid,
        "series": instance.series.series_uid,
        "instance": instance.sop_instance_uid,
        "numbers": "1",
        "number": "1",
        "path": "7FE00010",
    }


def _pages(study, share, patterns=None) -> list[str]:
    values = _values(study, share)
    urls = set()
    for _, route, groups in patterns or clinic_patterns(study.tenant.slug):
        if "admin" in route or any(g not in values for g in groups):
            continue  # see ADMIN_GROUPS, POST_ONLY_GROUPS and RECIPIENT_ENTRY_GROUPS
        urls.add(build_url(route, {g: values[g] for g in groups}))
    return sorted(urls)


def _body(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def _shows_phi(response) -> bool:
    body = _body(response)
    return any(marker in body for marker in SHOWN)


def _audited(events: list[AuditEvent], actor_id: str, ids: set[str]) -> bool:
    mine = [e for e in events if e.actor_id == actor_id and e.outcome == Outcome.SUCCESS]
    return any(e.target_id in ids or any(i in json.dumps(e.detail) for i in ids) for e in mine)


def _sweep(
    client: Client, actor_id: str, study, share, patterns=None
) -> tuple[list[str], list[str]]:
    """(pages that showed PHI, those of them that recorded nothing about the study)."""
    series = Series.objects.for_tenant(study.tenant).filter(study=study)
    ids = {
        str(study.pk),
        str(study.patient_id),
        *(str(pk) for pk in series.values_list("pk", flat=True)),
    }
    shown, unaudited = [], []
    for url in _pages(study, share, patterns):
        before = AuditEvent.objects.for_tenant(study.tenant).order_by("-seq").first()
        response = client.get(url)
        if response.status_code != 200 or not _shows_phi(response):
            continue
        shown.append(url)
        events = list(
            AuditEvent.objects.for_tenant(study.tenant).filter(seq__gt=before.seq if before else 0)
        )
        if not _audited(events, actor_id, ids):
            unaudited.append(url)
    return shown, unaudited


@pytest.mark.django_db
def test_every_staff_page_that_shows_a_patient_audits_it(client_for, all_staff_roles, study):
    share = _share(study, all_staff_roles)

    shown, unaudited = _sweep(client_for(all_staff_roles), str(all_staff_roles.pk), study, share)

    assert unaudited == []
    # Not vacuous: the worklist, the study page, the share pages and metadata showed PHI.
    slug = study.tenant.slug
    for page in (
        f"/t/{slug}/",
        f"/t/{slug}/studies/{study.pk}/",
        f"/t/{slug}/studies/{study.pk}/share/",
        f"/t/{slug}/shares/",
        f"/t/{slug}/shares/{share.pk}/",
    ):
        assert page in shown
    assert len(shown) >= 8


@pytest.mark.django_db
def test_every_patient_page_that_shows_their_record_audits_it(client_for, linked_patient, study):
    share = _share(study, linked_patient)

    shown, unaudited = _sweep(client_for(linked_patient), str(linked_patient.pk), study, share)

    assert unaudited == []
    slug = study.tenant.slug
    assert f"/t/{slug}/my/studies/{study.pk}/" in shown
    assert f"/t/{slug}/my/studies/{study.pk}/share/" in shown
    assert f"/t/{slug}/shares/{share.pk}/" in shown


@pytest.mark.django_db
def test_the_sweep_fills_every_id_a_clinic_page_takes(all_staff_roles, study):
    share = _share(study, all_staff_roles)
    groups = {g for _, route, gs in clinic_patterns(study.tenant.slug) for g in gs}

    unknown = groups - set(_values(study, share)) - ADMIN_GROUPS

    # A new kind of id must be taught to the sweep, or its pages are silently skipped.
    assert unknown <= POST_ONLY_GROUPS


@pytest.mark.django_db
def test_every_recipient_page_that_shows_the_study_audits_it(radiologist, study):
    share, recipient = _opened_share(study, radiologist)

    shown, unaudited = _sweep(recipient, str(share.pk), study, share, recipient_patterns())

    assert unaudited == []
    # Not vacuous: the share's page, its viewer's metadata and the download showed PHI.
    for page in ("/s/", "/s/download/"):
        assert page in shown
    assert any(url.endswith("/metadata") for url in shown)


@pytest.mark.django_db
def test_the_sweep_fills_every_id_a_recipient_page_takes(front_desk, study):
    share = _share(study, front_desk)
    groups = {g for _, _, gs in recipient_patterns() for g in gs}

    unknown = groups - set(_values(study, share))

    assert unknown <= RECIPIENT_ENTRY_GROUPS


def _received(response) -> bytes:
    """What reached the caller, up to the point a streamed answer broke off."""
    if not response.streaming:
        return response.content
    received = []
    with contextlib.suppress(Exception):  # the failure under test: what came before counts
        received.extend(response.streaming_content)
    return b"".join(received)


def _actions_recorded(client: Client, urls: list[str], monkeypatch) -> dict[str, set[str]]:
    """For each page that shows PHI, the actions it records."""
    from audit import recorder

    real, recorded = recorder.record_many, []

    def spy(**kwargs):
        recorded.extend(str(entry.action) for entry in kwargs["entries"])
        return real(**kwargs)

    pages = {}
    with monkeypatch.context() as patched:
        patched.setattr(recorder, "record_many", spy)
        for url in urls:
            recorded.clear()
            if _shows_phi(client.get(url)):
                pages[url] = set(recorded)
    return pages


def _shown_without_their_audit(client: Client, urls: list[str], monkeypatch) -> list:
    """(page, action) for each page still showing PHI when one of its events fails."""
    from audit import recorder

    real, shown = recorder.record_many, []
    for url, actions in _actions_recorded(client, urls, monkeypatch).items():
        for action in sorted(actions):

            def record_many(action=action, **kwargs):
                if any(str(entry.action) == action for entry in kwargs["entries"]):
                    raise DatabaseError("the audit append failed")
                return real(**kwargs)

            with monkeypatch.context() as patched:
                patched.setattr(recorder, "record_many", record_many)
                body = _received(client.get(url))
            if any(marker in body for marker in SHOWN):
                shown.append((url, action))
    return shown


@pytest.mark.django_db
def test_no_staff_or_patient_page_shows_a_patient_when_its_look_cannot_be_audited(
    all_staff_roles, linked_patient, study, monkeypatch
):
    share = _share(study, all_staff_roles)
    staff = verified_client(all_staff_roles, raise_request_exception=False)
    patient = verified_client(linked_patient, raise_request_exception=False)
    pages = _pages(study, share)

    assert _shown_without_their_audit(staff, pages, monkeypatch) == []
    assert _shown_without_their_audit(patient, pages, monkeypatch) == []
    # Not vacuous: the study page records its look, and fails visibly without it.
    study_page = f"/t/{study.tenant.slug}/studies/{study.pk}/"
    assert "study.viewed" in _actions_recorded(staff, [study_page], monkeypatch)[study_page]


@pytest.mark.django_db
def test_no_recipient_page_shows_the_study_when_its_look_cannot_be_audited(
    radiologist, study, monkeypatch
):
    share, recipient = _opened_share(study, radiologist, raise_request_exception=False)
    pages = _pages(study, share, recipient_patterns())

    assert _shown_without_their_audit(recipient, pages, monkeypatch) == []
    assert "/s/download/" in _actions_recorded(recipient, pages, monkeypatch)
