"""ShareLink.made_as_patient: a link outlives the confidential mark and its maker's
grants when the study's patient made it from their portal, decided by how it was made.

Links made before were told apart by who made them: those whose maker is the study's
patient now (record linked, patient role held, membership active) are marked, so every
existing link keeps the treatment it had.
"""

from django.db import migrations, models
from django.db.models import Exists, OuterRef


def forward(apps, schema_editor):
    ShareLink = apps.get_model("sharing", "ShareLink")
    PatientLink = apps.get_model("sharing", "PatientLink")
    Membership = apps.get_model("tenants", "Membership")
    # Every clinic's rows (the base managers are not scoped): the rule changed for all.
    # One statement, so the table is not held while links are read one by one.
    linked = PatientLink._base_manager.filter(
        tenant_id=OuterRef("tenant_id"),
        patient_id=OuterRef("study__patient_id"),
        user_id=OuterRef("created_by_id"),
        revoked_at__isnull=True,
    )
    patient = Membership._base_manager.filter(
        tenant_id=OuterRef("tenant_id"),
        user_id=OuterRef("created_by_id"),
        is_active=True,
        roles__code="patient",
    )
    theirs = ShareLink._base_manager.filter(Exists(linked), Exists(patient)).values("pk")
    ShareLink._base_manager.filter(pk__in=theirs).update(made_as_patient=True)


class Migration(migrations.Migration):
    dependencies = [
        ("sharing", "0003_patient_invitation_review"),
        ("tenants", "0006_tenant_time_zone"),
    ]

    operations = [
        migrations.AddField(
            model_name="sharelink",
            name="made_as_patient",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(forward, migrations.RunPython.noop),
    ]
