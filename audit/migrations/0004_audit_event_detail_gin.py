"""A GIN index over the audit events' detail, on PostgreSQL.

The privacy officer's study filter and a study page's history find the events that
name a study anywhere in their detail (`detail__mentions`, audit.lookups). Without an
index that reads the clinic's events one by one, newest first: 360 ms at 300,000
events, seconds at millions. With it, under 1 ms (bench/audit_study_filter.py).

Each audited insert pays for it. New entries wait in the index's pending list, which an
insert merges into the index now and then: a search naming 100 studies costs 0.08 ms
more at the median and 0.7 ms more on average. A 1 MB list (PostgreSQL's default is 4)
keeps the insert that merges it near 0.14 s rather than 0.5 s; without the list
(fastupdate off) every such search would cost 0.8 ms more.

Built CONCURRENTLY so an existing log keeps taking events while it builds; SQLite, the
embedded default, has no such index and scans.
"""

from django.db import migrations

NAME = "audit_event_detail_gin"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON audit_auditevent "
            "USING gin (detail) WITH (gin_pending_list_limit = 1024)"
        )


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("audit", "0003_audit_event_no_redundant_fk_indexes")]

    operations = [migrations.RunPython(forward, backward)]
