"""Finding the events that name a study anywhere in their detail: exactly that value, at
any depth, for one clinic; on PostgreSQL through the detail's index, not a scan."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction

import audit
from audit.models import Action, AuditEvent
from audit.selectors import events_about_study
from tests.helpers import TEST_ACTOR, require_postgresql


def note(tenant, **detail) -> AuditEvent:
    return audit.record(
        actor=TEST_ACTOR, action=Action.DICOMWEB_SEARCH, target=None, tenant=tenant, detail=detail
    )


def about(tenant, study_id: str) -> set[int]:
    return {e.pk for e in events_about_study(tenant=tenant, study_id=study_id, series_ids=[])}


@pytest.mark.django_db
def test_events_naming_the_study_at_any_depth_are_found(clinic):
    study_id = str(uuid.uuid4())
    listed = note(clinic, studies=[str(uuid.uuid4()), study_id])
    named = note(clinic, study=study_id)
    nested = note(clinic, page={"masked": [study_id]})
    note(clinic, studies=[str(uuid.uuid4())])  # another study's
    note(clinic, reason=f"not {study_id}")  # within a longer text: not a mention of it

    found = about(clinic, study_id)

    assert found == {listed.pk, named.pk, nested.pk}


@pytest.mark.django_db
def test_another_clinics_events_naming_the_study_are_not_found(clinic, other_clinic):
    study_id = str(uuid.uuid4())
    ours = note(clinic, studies=[study_id])
    note(other_clinic, studies=[study_id])

    assert about(clinic, study_id) == {ours.pk}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value, decoy",
    [
        ("a%b", "aXb"),  # LIKE's wildcards are the value's own characters
        ("a_b", "aXb"),
        ('x") || (@ == "y', "y"),  # a quote cannot end the JSON path's string
        ("back\\slash", "back"),
    ],
)
def test_mentions_match_the_value_itself_and_nothing_else(clinic, value, decoy):
    exact = note(clinic, ref=value)
    note(clinic, ref=decoy)

    found = set(AuditEvent.objects.for_tenant(clinic).filter(detail__mentions=value))

    assert found == {exact}


@pytest.mark.django_db
def test_study_lookup_is_served_by_the_detail_index_on_postgresql(clinic):
    require_postgresql()
    # The lookup alone: with a clinic's few events the planner would rather read them all.
    events = AuditEvent.objects.unscoped(reason="test: the plan of the detail lookup alone")
    query = events.filter(detail__mentions=str(uuid.uuid4()))
    sql, params = query.values("pk").query.sql_with_params()

    with transaction.atomic(), connection.cursor() as cursor:
        # Any plan but a scan: without the index the planner has nothing else.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "audit_event_detail_gin" in plan, plan
