"""Drop the audit events' single-column foreign-key indexes: other indexes lead with them.

Every audited request inserts an event, and each index costs that insert. (chain, seq)
serves lookups by chain and the three (tenant, ...) indexes lookups by clinic.

The indexes are dropped by name rather than through AlterField: on SQLite AlterField
rebuilds the table, which would drop the append-only trigger with it.
"""

import django.db.models.deletion
from django.db import migrations, models

INDEXES = {
    "audit_auditevent_chain_id_ce5ff5d4": "chain_id",
    "audit_auditevent_tenant_id_570ea526": "tenant_id",
}


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_append_only_triggers"),
        ("tenants", "0002_seed_roles"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="auditevent",
                    name="chain",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="audit.auditchain",
                    ),
                ),
                migrations.AlterField(
                    model_name="auditevent",
                    name="tenant",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=[f"DROP INDEX IF EXISTS {name}" for name in INDEXES],
                    reverse_sql=[
                        f"CREATE INDEX IF NOT EXISTS {name} ON audit_auditevent ({column})"
                        for name, column in INDEXES.items()
                    ],
                ),
            ],
        ),
    ]
