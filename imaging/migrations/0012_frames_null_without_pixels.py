"""An instance without pixel data (a report, a plan) has no frame count: null, which
search results leave without a value, where 1 was recorded for it."""

from django.db import migrations, models


def forward(apps, schema_editor):
    Instance = apps.get_model("imaging", "Instance")
    # Every clinic's rows (the base manager is not scoped): recorded alike for all.
    Instance._base_manager.filter(pixel_tag="").update(number_of_frames=None)


def backward(apps, schema_editor):
    Instance = apps.get_model("imaging", "Instance")
    Instance._base_manager.filter(number_of_frames=None).update(number_of_frames=1)


class Migration(migrations.Migration):
    dependencies = [
        ("imaging", "0011_qido_required_keys"),
    ]

    operations = [
        migrations.AlterField(
            model_name="instance",
            name="number_of_frames",
            field=models.PositiveIntegerField(blank=True, default=1, null=True),
        ),
        migrations.RunPython(forward, backward),
    ]
