from django.db import migrations

ROLES = [
    ("tenant_admin", "Tenant admin"),
    ("radiologist", "Radiologist"),
    ("technologist", "Technologist"),
    ("front_desk", "Front desk"),
    ("referring_physician", "Referring physician"),
    ("privacy_officer", "Privacy officer"),
    ("patient", "Patient"),
]


def seed_roles(apps, schema_editor):
    Role = apps.get_model("tenants", "Role")
    for code, name in ROLES:
        Role.objects.update_or_create(code=code, defaults={"name": name})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [migrations.RunPython(seed_roles, migrations.RunPython.noop)]
