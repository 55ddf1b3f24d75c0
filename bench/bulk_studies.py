"""Add index rows for many studies to the bench database, for QIDO-RS at scale.

QIDO-RS reads only the index (patients and studies), so loading 100,000 studies through
STOW-RS, hours of work, is not needed to measure it. The rows are what ingest would
write for one-instance studies (each with its own wrapped study key), without objects.

Usage (with the bench's environment): python bench/bulk_studies.py TOTAL
Adds studies until the clinic `bench` holds TOTAL; PatientIDs are BULK-<n>.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 5000


def main() -> None:
    total = int(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    import datetime as dt
    import uuid

    from django.db import transaction
    from pydicom.uid import generate_uid

    from imaging.keyring import study_dek_new, tenant_key_active
    from imaging.models import Patient, Study
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug="bench")
    have = Study.objects.for_tenant(tenant).count()
    active = tenant_key_active(tenant=tenant)
    for start in range(have, total, BATCH):
        patients, studies = [], []
        for index in range(start, min(total, start + BATCH)):
            patient = Patient(
                tenant=tenant,
                patient_id=f"BULK-{index:07d}",
                name=f"Bulk^Patient{index:07d}",
                birth_date=dt.date(1950, 1, 1) + dt.timedelta(days=index % 20000),
                sex="MF"[index % 2],
            )
            study = Study(
                id=uuid.uuid4(),
                tenant=tenant,
                patient=patient,
                study_uid=generate_uid(),
                study_date=dt.date(2020, 1, 1) + dt.timedelta(days=index % 2000),
                study_time="120000",
                accession_number=f"BULK{index:07d}",
                description="Bulk study",
                modalities="CT",
                num_series=1,
                num_instances=1,
                size_bytes=10_000,
            )
            _, study.wrapped_dek, study.key_version = study_dek_new(
                tenant=tenant, study_id=study.pk, active_key=active
            )
            patients.append(patient)
            studies.append(study)
        with transaction.atomic():
            Patient.objects.bulk_create(patients)
            Study.objects.bulk_create(studies)
        print(f"{start + len(studies)} studies", flush=True)
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE imaging_patient; ANALYZE imaging_study;")


if __name__ == "__main__":
    main()
