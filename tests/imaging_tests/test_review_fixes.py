"""Regression tests for defects found in review: each would fail without its fix."""

from __future__ import annotations

import io
import zipfile

import pydicom
import pytest
from django.core import mail
from django.db.models import F
from django.test import Client

from audit.models import Action, AuditEvent
from imaging.ingest import IngestOutcome, ingest_archive
from imaging.models import Patient, Study
from tenants.models import Membership
from tenants.scoping import TenantScopeError
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.helpers import INGEST_ACTOR, ingest, synthetic_ct


def _rewrite(data: bytes, **attributes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if "TransferSyntaxUID" in attributes:
        ds.file_meta.TransferSyntaxUID = attributes["TransferSyntaxUID"]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.django_db
def test_unknown_transfer_syntax_is_rejected_not_a_500(clinic):
    (data,) = synthetic_ct(slices=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)

    result = ingest(clinic, out.getvalue())

    assert result.code == "unknown_transfer_syntax"


@pytest.mark.django_db
@pytest.mark.parametrize("attributes", [{"NumberOfFrames": "-3"}, {"SeriesNumber": "99999999999"}])
def test_out_of_range_numbers_are_rejected(attributes, clinic):
    (data,) = synthetic_ct(slices=1)

    result = ingest(clinic, _rewrite(data, **attributes))

    assert result.outcome == IngestOutcome.REJECTED
    assert result.code == "invalid_value"


@pytest.mark.django_db
def test_corrupt_zip_entry_is_rejected_and_others_still_ingest(clinic):
    good = synthetic_ct(slices=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.dcm", good[0])
        archive.writestr("b.dcm", good[1])
    raw = bytearray(buffer.getvalue())
    raw[raw.rfind(good[1][-64:]) + 5] ^= 0xFF  # corrupt b.dcm's pixels: CRC mismatch

    results = ingest_archive(
        tenant=clinic, actor=INGEST_ACTOR, fileobj=io.BytesIO(bytes(raw)), name="x.zip"
    )

    assert [r.outcome for r in results] == [IngestOutcome.STORED, IngestOutcome.REJECTED]
    assert results[1].code == "bad_archive"


@pytest.mark.django_db
def test_files_without_patient_id_are_not_merged_into_one_patient(clinic):
    first = synthetic_ct(slices=1, patient_id="", patient_name="Alpha^One")[0]
    second = synthetic_ct(slices=1, patient_id="", patient_name="Beta^Two")[0]

    ingest(clinic, first)
    ingest(clinic, second)

    names = sorted(Study.objects.for_tenant(clinic).values_list("patient__name", flat=True))
    assert names == ["Alpha^One", "Beta^Two"]
    assert Patient.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_scope_guard_refuses_expressions_subqueries_and_joined_tenants(clinic, radiologist):
    with pytest.raises(TenantScopeError):
        list(Membership.objects.filter(tenant=F("user__memberships__tenant")))
    with pytest.raises(TenantScopeError):
        list(
            Membership.objects.filter(
                tenant__in=Membership.objects.for_tenant(clinic).values("tenant")
            )
        )
    with pytest.raises(TenantScopeError):
        list(Membership.objects.filter(user__memberships__tenant=clinic))


@pytest.mark.django_db
def test_adding_a_second_authenticator_needs_step_up(clinic, radiologist, client_for):
    from tenants.mfa import MFA_AT

    client = client_for(radiologist)
    session = client.session
    session[MFA_AT] -= 11 * 60
    session.save()

    response = client.get("/accounts/enrol/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/step-up/")


@pytest.mark.django_db
def test_platform_admin_login_goes_through_the_throttled_sign_in(db):
    response = Client().get("/admin/login/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_member_added_without_password_can_get_a_reset_link(
    clinic, django_capture_on_commit_callbacks
):
    from tenants.services import membership_add, user_create

    user = user_create(email="new@north.example", actor=TEST_ACTOR, tenant=clinic)
    membership_add(tenant=clinic, user=user, roles=["technologist"], actor=TEST_ACTOR)

    with django_capture_on_commit_callbacks(execute=True):  # the mail goes after commit
        Client().post("/accounts/password-reset/", {"email": "new@north.example"})

    assert [m.to for m in mail.outbox] == [["new@north.example"]]


@pytest.mark.django_db
def test_superuser_flag_opens_no_object_grant(clinic, radiologist):
    from tenants.grants import object_granted
    from tests.helpers import membership_of

    operator = radiologist
    operator.is_superuser = True
    operator.save()

    assert not object_granted(
        tenant=clinic,
        user=operator,
        perm="tenants.view_membership",
        obj=membership_of(radiologist, clinic),
    )


@pytest.mark.django_db
def test_worklist_views_are_audited_without_the_search_text(clinic, radiologist, client_for):
    (data,) = synthetic_ct(slices=1, patient_name="Secret^Name")
    result = ingest(clinic, data)

    client = client_for(radiologist)
    client.get(client.post("/t/north/", {"text": "Secret"})["Location"])

    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.WORKLIST_VIEWED)
    assert event.detail["studies"] == [result.study_id]
    assert event.detail["searched"] is True
    assert "Secret" not in str(event.detail)
