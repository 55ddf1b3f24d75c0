"""Instances of classes `imaging.deidentify.pixels_may_identify` now treats as identifying
(retired ultrasound and visible-light classes; photographs cleared by Burned In Annotation
NO alone) are marked not assessed: withheld from de-identified links until
`manage.py instance_headers_backfill` assesses them again from their headers."""

from django.db import migrations
from django.db.models import Q

RETIRED_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.3",
    "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.77.1",
    "1.2.840.10008.5.1.4.1.1.77.2",
]
PHOTOGRAPHS = "1.2.840.10008.5.1.4.1.1.77.1.4"


def forward(apps, schema_editor):
    Instance = apps.get_model("imaging", "Instance")
    # Every clinic's rows (the base manager is not scoped): the rule changed for all alike.
    instances = Instance._base_manager.all()
    instances.filter(pixels_may_identify=False).filter(
        Q(sop_class_uid__in=RETIRED_CLASSES)
        | Q(sop_class_uid=PHOTOGRAPHS)
        | Q(sop_class_uid__startswith=PHOTOGRAPHS + ".")
    ).update(pixels_may_identify=None)


class Migration(migrations.Migration):
    dependencies = [
        ("imaging", "0009_instance_pixels_may_identify"),
    ]

    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
