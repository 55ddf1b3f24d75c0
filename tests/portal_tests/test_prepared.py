"""Prepared statements: the per-request lookups and compiled searches stay planned on
PostgreSQL; Django's own queries never are.

PostgreSQL lists a connection's prepared statements in `pg_prepared_statements`; these
tests read it from the same connection the portal used.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.actors import Actor
from imaging.dicomweb.query import parse_query
from imaging.dicomweb.search import search_rows
from portal import rows
from tenants.models import ApiToken
from tenants.tokens import api_token_authenticate, api_token_create
from tests.helpers import require_postgresql

pytestmark = pytest.mark.django_db


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def test_a_statement_run_through_the_prepared_cursor_stays_prepared(clinic):
    require_postgresql()
    sql = f"SELECT {rows.column(ApiToken, 'name')} FROM {rows.table(ApiToken)} WHERE name = %s"  # noqa: S608 - identifiers from metadata

    with rows.prepared_cursor() as cursor:
        cursor.execute(sql, ["first"])
        assert cursor.fetchall() == []
    with rows.prepared_cursor() as cursor:
        cursor.execute(sql, ["second"])

    matching = [s for s in _prepared() if s.endswith("WHERE name = $1")]
    assert len(matching) == 1  # prepared once, run twice


def test_django_queries_are_not_prepared(clinic):
    require_postgresql()

    list(ApiToken.objects.for_tenant(clinic).filter(name="never prepared"))
    list(ApiToken.objects.for_tenant(clinic).filter(name="never prepared"))

    assert not [s for s in _prepared() if "never prepared" in s or "tenants_apitoken" in s]


def test_with_preparing_off_the_statement_runs_unprepared(clinic, monkeypatch):
    require_postgresql()
    connection.ensure_connection()
    monkeypatch.setattr(connection.connection, "prepare_threshold", None)

    with rows.prepared_cursor() as cursor:
        cursor.execute("SELECT 41 + %s", [1])
        assert cursor.fetchone() == (42,)

    assert not [s for s in _prepared() if "41" in s]


def _credential(clinic) -> str:
    return api_token_create(
        tenant=clinic,
        name="RIS",
        scopes=["dicomweb:read"],
        actor=Actor.system("tests"),
        now=timezone.now(),
    )[1]


def test_the_token_lookup_is_prepared(clinic):
    require_postgresql()
    credential = _credential(clinic)
    seen: list[str] = []

    def watch(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        found = api_token_authenticate(raw=credential, now=timezone.now())

    assert found is not None and found.tenant == clinic
    assert any("tenants_apitoken" in sql for sql in seen)  # execute wrappers still see it
    assert [s for s in _prepared() if '"tenants_apitoken"."prefix" = $1' in s]


def test_a_logged_query_keeps_its_text_and_is_not_prepared(clinic):
    require_postgresql()
    credential = _credential(clinic)

    with CaptureQueriesContext(connection) as queries:
        found = api_token_authenticate(raw=credential, now=timezone.now())

    assert found is not None
    assert any('"tenants_apitoken"."prefix" = ' in q["sql"] for q in queries.captured_queries)
    assert not [s for s in _prepared() if "tenants_apitoken" in s]


def test_the_prepared_cursor_works_on_every_database():
    with rows.prepared_cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1


def test_a_compiled_search_is_prepared(clinic):
    require_postgresql()
    query = parse_query(QueryDict("PatientID=PID-404"), level="study")
    for _ in range(2):
        assert search_rows(tenant=clinic, query=query, level="study") == []

    assert [s for s in _prepared() if "imaging_study" in s and "$1" in s]
