"""Revoking links while their recipients are mid-request: no deadlock, nothing lost.

A recipient's request locks its link, then appends to the clinic's audit chain. Every
revocation must take the links in the same order (links first, then the chain), or
PostgreSQL ends one of the two with a deadlock error: a 500 for the recipient or for
the member who revoked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection
from django.utils import timezone

import sharing.services
from audit.models import Action, AuditEvent
from audit.verify import chains_verify
from imaging.services import study_grant, study_grant_revoke, study_set_confidential
from sharing.invitations import patient_link_revoke
from sharing.models import PatientLink, ShareLink
from sharing.services import share_check_secret
from tenants.tokens import api_token_revoke
from tests.helpers import TEST_ACTOR, make_member, membership_of, require_postgresql
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_links_follow_access import link, link_by_token, linked_patient

WAIT_SECONDS = 20


def _staff_link(study) -> tuple[ShareLink, Callable[[], object]]:
    share = link(study, created_by=make_member(study.tenant, "radiologist"))
    marker = make_member(study.tenant, "radiologist", email="marker@north.example")
    return share, lambda: study_set_confidential(
        study=study, confidential=True, by=marker, actor=TEST_ACTOR, now=timezone.now()
    )


def _granted_link(study) -> tuple[ShareLink, Callable[[], object]]:
    physician = make_member(study.tenant, "referring_physician")
    study_grant(study=study, grantee=physician, download=False, actor=TEST_ACTOR)
    share = link(study, created_by=physician)
    return share, lambda: study_grant_revoke(
        study=study, grantee=physician, actor=TEST_ACTOR, now=timezone.now()
    )


def _token_link(study) -> tuple[ShareLink, Callable[[], object]]:
    share = link_by_token(study)
    token = share.created_by_token
    return share, lambda: api_token_revoke(token=token, actor=TEST_ACTOR, now=timezone.now())


def _patient_link(study) -> tuple[ShareLink, Callable[[], object]]:
    user = linked_patient(study, make_member(study.tenant, "front_desk"))
    share = link(study, membership=membership_of(user, study.tenant), as_patient=True)
    record = PatientLink.objects.for_tenant(study.tenant).get(user=user)
    return share, lambda: patient_link_revoke(link=record, actor=TEST_ACTOR, now=timezone.now())


def _someone_waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize(
    "revocation",
    [_staff_link, _granted_link, _token_link, _patient_link],
    ids=["confidential-mark", "grant-withdrawn", "token-revoked", "record-unlinked"],
)
def test_a_link_revoked_while_its_pin_is_being_checked_deadlocks_neither(
    clinic, revocation, monkeypatch
):
    require_postgresql()
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16, patient_name="Doe^Jane"))
    share, revoke = revocation(study)
    checking = threading.Event()
    revoker_waits = threading.Event()
    real_check = sharing.services.check_password

    def slow_check(answer: str, encoded: str) -> bool:
        # The recipient's request holds its link's lock here, before it audits the miss.
        checking.set()
        revoker_waits.wait(WAIT_SECONDS)
        return real_check(answer, encoded)

    monkeypatch.setattr(sharing.services, "check_password", slow_check)
    errors: list[BaseException] = []

    def in_thread(work: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
            finally:
                connection.close()

        return run

    recipient = threading.Thread(
        target=in_thread(
            lambda: share_check_secret(share=share, answer="0000", now=timezone.now(), ip=None)
        )
    )
    revoker = threading.Thread(target=in_thread(revoke))

    recipient.start()
    assert checking.wait(WAIT_SECONDS)
    revoker.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not _someone_waits_for_a_lock() and time.monotonic() < deadline:
        time.sleep(0.02)
    revoker_waits.set()
    recipient.join(WAIT_SECONDS)
    revoker.join(WAIT_SECONDS)

    assert errors == []
    assert ShareLink.objects.for_tenant(clinic).get(pk=share.pk).revoked_at is not None
    events = AuditEvent.objects.for_tenant(clinic).filter(detail__share=str(share.pk))
    assert set(events.values_list("action", flat=True)) >= {
        Action.SHARE_PIN_FAILED,
        Action.SHARE_REVOKED,
    }
    assert all(report.intact for report in chains_verify(tenant_slug=clinic.slug))
