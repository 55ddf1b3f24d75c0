"""`make run`'s demo clinic comes with studies a radiologist, a referrer and a patient can open."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from imaging.demo import ALICE, BUNDLED_FILES
from imaging.models import Series, Study
from sharing.models import PatientLink
from tenants.grants import object_granted
from tenants.models import Tenant, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(settings, django_capture_on_commit_callbacks):
    settings.DEBUG = True
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):  # the thumbnails render
        call_command("bootstrap_demo", stdout=out)
    return Tenant.objects.get(slug="demo"), out.getvalue()


def _user(role: str) -> User:
    return User.objects.get(email=f"{role}@demo-clinic.example")


def test_every_demo_file_is_stored_and_every_series_renders(demo):
    tenant, out = demo
    studies = Study.objects.for_tenant(tenant)
    series = Series.objects.for_tenant(tenant)

    assert "rejected 0" in out
    described = {study.description for study in studies}
    assert {"CT Chest (synthetic)", "MR Head (synthetic)"} <= described
    assert studies.count() >= 3 + 1  # the synthetic ones and pydicom's files
    assert series.count() >= 3 + len(BUNDLED_FILES) - 1
    assert set(series.values_list("thumbnail_status", flat=True)) == {"ready"}


def test_the_demo_patient_sees_alices_record_and_the_referrer_her_chest_ct(demo):
    tenant, _ = demo
    chest = Study.objects.for_tenant(tenant).get(description="CT Chest (synthetic)")

    link = PatientLink.objects.for_tenant(tenant).get(user=_user("patient"), revoked_at=None)
    assert link.patient_id == chest.patient_id
    assert chest.patient.patient_id == ALICE.patient_id
    assert object_granted(
        tenant=tenant, user=_user("referring-physician"), perm="imaging.view_study", obj=chest
    )
