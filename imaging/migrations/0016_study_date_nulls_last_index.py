"""The worklist sorts undated studies last (`imaging.selectors.SORTS`): on PostgreSQL an
index on `study_date DESC` keeps them first, so it could not serve the default sort.
SQLite sorts NULLs that way already, and its indexes take no NULLS clause."""

from django.db import migrations

CREATE = (
    "CREATE INDEX IF NOT EXISTS imaging_study_tenant_date_nulls_last ON imaging_study "
    "(tenant_id, study_date DESC NULLS LAST, created_at DESC, id DESC)"
)
DROP = "DROP INDEX IF EXISTS imaging_study_tenant_date_nulls_last"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("imaging", "0015_study_patient_differs")]

    operations = [migrations.RunPython(forward, backward)]
