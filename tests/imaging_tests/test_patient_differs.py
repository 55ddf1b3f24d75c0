"""A study whose images give other patient details than its record is held, not merged
silently: staff see it flagged, the patient portal does not show it until confirmed."""

from __future__ import annotations

import io
import uuid

import pydicom
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import Action, AuditEvent
from imaging.ingest import IngestOutcome, ingest_many
from imaging.models import Study
from imaging.services import study_patient_confirm
from tests.helpers import TEST_ACTOR, page_body
from tests.imaging_tests.helpers import ingest, ingest_study, synthetic_ct
from tests.sharing_tests.test_patient_portal import accept_as_new_patient, invite


def _study(*, name: str, birth_date: str = "19700101", slices: int = 1) -> list[bytes]:
    return synthetic_ct(
        slices=slices,
        size=16,
        patient_name=name,
        patient_id="MRN7",
        tags={"PatientBirthDate": birth_date, "SpecificCharacterSet": "ISO_IR 192"},
    )


def _row(files: list[bytes], tenant) -> Study:
    uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    return Study.objects.for_tenant(tenant).get(study_uid=uid)


def _confirm_url(study: Study) -> str:
    return reverse(
        "study_patient_confirmed", kwargs={"tenant_slug": study.tenant.slug, "study_id": study.pk}
    )


@pytest.fixture
def first_study(clinic):
    return ingest_study(clinic, _study(name="Smith^Anna"))


@pytest.mark.django_db
def test_a_study_giving_another_name_and_birth_date_is_stored_held_and_audited(clinic, first_study):
    files = _study(name="Jones^Robert", birth_date="19511231")

    result = ingest(clinic, files[0])

    assert result.outcome == IngestOutcome.STORED
    held = _row(files, clinic)
    assert held.patient_id == first_study.patient_id  # the PatientID's record, as before
    assert (held.patient_held, held.patient_differs) == (True, ["birth_date", "name"])
    first_study.refresh_from_db()
    assert (first_study.patient_held, first_study.patient_differs) == (False, [])
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.STUDY_PATIENT_DIFFERS)
    assert event.target_id == str(held.pk)
    assert event.detail == {"fields": ["birth_date", "name"], "held_from_patient_portal": True}


@pytest.mark.django_db
def test_a_batch_with_a_differing_study_holds_it_once(clinic, first_study):
    files = _study(name="Jones^Robert", slices=3)

    results = ingest_many(tenant=clinic, actor=TEST_ACTOR, items=[("f", d) for d in files])

    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 3
    held = _row(files, clinic)
    assert (held.patient_held, held.patient_differs, held.num_instances) == (True, ["name"], 3)
    assert (
        AuditEvent.objects.for_tenant(clinic).filter(action=Action.STUDY_PATIENT_DIFFERS).count()
        == 1
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "birth_date"),
    [
        ("SMITH^ANNA^^", "19700101"),  # case and empty trailing components
        ("Smith ^ Anna", "19700101"),  # spacing
        ("Smith^Anna=スミス^アンナ", "19700101"),  # an ideographic group added
        ("Smith^Anna", ""),  # a birth date left out
        ("", "19700101"),  # a name left out
    ],
)
def test_the_same_details_written_otherwise_or_left_out_do_not_hold(
    clinic, first_study, name, birth_date
):
    files = _study(name=name, birth_date=birth_date)

    ingest(clinic, files[0])

    assert _row(files, clinic).patient_held is False
    assert (
        not AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.STUDY_PATIENT_DIFFERS)
        .exists()
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("record", "file", "held"),
    [
        ("=山田^太郎", "=鈴木^花子", True),  # ideographic groups only, other people
        ("=山田^太郎", "=山田^太郎", False),
        ("Yamada^Tarou=山田^太郎", "=鈴木^花子", True),  # the first group both give
        ("Yamada^Tarou=山田^太郎", "=山田^太郎=やまだ^たろう", False),
        ("Yamada^Tarou=山田^太郎", "YAMADA^TAROU=山田^太朗", False),  # a variant kanji
    ],
)
def test_names_are_compared_in_the_first_group_both_give(clinic, record, file, held):
    ingest_study(clinic, _study(name=record))
    files = _study(name=file)

    ingest(clinic, files[0])

    assert _row(files, clinic).patient_held is held


@pytest.mark.django_db
def test_a_file_of_a_shown_study_giving_other_details_holds_it(clinic, first_study):
    later = _into(first_study, _study(name="Jones^Robert"))

    ingest(clinic, later[0])

    first_study.refresh_from_db()
    assert (first_study.patient_held, first_study.patient_differs) == (True, ["name"])


@pytest.mark.django_db
def test_staff_see_the_hold_and_a_technologist_confirms_it(
    clinic, first_study, technologist, front_desk, client_for
):
    files = _study(name="Jones^Robert")
    ingest(clinic, files[0])
    held = _row(files, clinic)
    staff = client_for(technologist)

    worklist = staff.get(f"/t/{clinic.slug}/").content.decode()
    page = staff.get(f"/t/{clinic.slug}/studies/{held.pk}/").content.decode()
    refused = client_for(front_desk).post(_confirm_url(held), {"seen": 1})
    confirmed = staff.post(_confirm_url(held), {"seen": 1})
    again = staff.post(_confirm_url(held), {"seen": 1})

    assert worklist.count("Check patient") == 1
    assert "Images of this study give another name than this patient record" in page
    assert "Confirm it is this patient's study" in page
    assert refused.status_code == 403
    assert confirmed.status_code == 302
    held.refresh_from_db()
    assert (held.patient_held, held.patient_differs) == (False, ["name"])
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.STUDY_PATIENT_CONFIRMED)
    assert (event.target_id, event.actor_id, event.detail) == (
        str(held.pk),
        str(technologist.pk),
        {"fields": ["name"], "sets": 1},
    )
    assert again.status_code == 302  # nothing held: nothing changed, nothing audited
    assert (
        AuditEvent.objects.for_tenant(clinic).filter(action=Action.STUDY_PATIENT_CONFIRMED).count()
        == 1
    )
    assert "Check patient" not in staff.get(f"/t/{clinic.slug}/").content.decode()


@pytest.mark.django_db
def test_a_member_of_another_clinic_cannot_confirm(
    clinic, first_study, other_tenant_all_roles, client_for
):
    files = _study(name="Jones^Robert")
    ingest(clinic, files[0])
    held = _row(files, clinic)
    outsider = client_for(other_tenant_all_roles)

    response = outsider.post(_confirm_url(held), {"seen": 1})
    missing = outsider.post(_confirm_url(Study(tenant=clinic, pk=uuid.uuid4())), {"seen": 1})

    assert response.status_code == missing.status_code == 404
    assert page_body(response) == page_body(missing)
    held.refresh_from_db()
    assert held.patient_held is True


@pytest.mark.django_db
def test_the_patient_portal_shows_a_held_study_only_once_confirmed(
    clinic, first_study, front_desk, radiologist, client_for, django_capture_on_commit_callbacks
):
    token = invite(first_study, front_desk, capture=django_capture_on_commit_callbacks)
    patient = accept_as_new_patient(token)
    files = _study(name="Jones^Robert")
    ingest(clinic, files[0])
    held = _row(files, clinic)

    before = patient.get(f"/t/{clinic.slug}/my/").content.decode()
    opened_before = patient.get(f"/t/{clinic.slug}/my/studies/{held.pk}/")
    client_for(radiologist).post(_confirm_url(held), {"seen": 1})
    after = patient.get(f"/t/{clinic.slug}/my/").content.decode()

    assert str(first_study.pk) in before and str(held.pk) not in before
    assert opened_before.status_code == 404
    assert str(held.pk) in after


def _into(study: Study, files: list[bytes]) -> list[bytes]:
    """The files moved into `study` (its StudyInstanceUID)."""
    moved = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = study.study_uid
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        moved.append(buffer.getvalue())
    return moved


@pytest.mark.django_db
def test_a_third_persons_images_hold_a_confirmed_study_again(clinic, first_study, radiologist):
    files = _study(name="Jones^Robert", slices=2)
    ingest(clinic, files[0])
    held = _row(files, clinic)
    study_patient_confirm(study=held, actor=TEST_ACTOR, seen=1)

    ingest(clinic, files[1])  # the confirmed person again: nothing new
    still_released = Study.objects.for_tenant(clinic).get(pk=held.pk).patient_held
    ingest(clinic, _into(held, _study(name="Brown^Carol"))[0])

    held.refresh_from_db()
    assert still_released is False
    assert (held.patient_held, held.patient_differs, len(held.patient_headers)) == (
        True,
        ["name"],
        2,
    )
    differs = AuditEvent.objects.for_tenant(clinic).filter(action=Action.STUDY_PATIENT_DIFFERS)
    assert differs.count() == 2


@pytest.mark.django_db
def test_a_confirmation_covers_only_the_details_its_page_showed(
    clinic, first_study, radiologist, client_for
):
    files = _study(name="Jones^Robert")
    ingest(clinic, files[0])
    held = _row(files, clinic)
    staff = client_for(radiologist)
    page = staff.get(f"/t/{clinic.slug}/studies/{held.pk}/").content.decode()
    ingest(clinic, _into(held, _study(name="Jones^Robert", birth_date="19511231"))[0])

    stale = staff.post(_confirm_url(held), {"seen": 1}, follow=True)
    bad = staff.post(_confirm_url(held), {"seen": "one"})

    assert 'name="seen" value="1"' in page
    assert "arrived since this page was shown" in stale.content.decode()
    assert bad.status_code == 400
    held.refresh_from_db()
    assert held.patient_held is True
    assert (
        not AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.STUDY_PATIENT_CONFIRMED)
        .exists()
    )


@pytest.mark.django_db
def test_links_the_patient_made_pause_while_the_study_is_held_and_stay_theirs_to_revoke(
    clinic, front_desk, django_capture_on_commit_callbacks
):
    from sharing.models import ShareLink
    from sharing.services import share_create
    from tests.helpers import membership_of
    from tests.sharing_tests.test_links_follow_access import linked_patient

    study = ingest_study(clinic, _study(name="Smith^Anna"))
    patient = linked_patient(study, front_desk)
    share, token = share_create(
        study=study,
        actor=TEST_ACTOR,
        now=timezone.now(),
        membership=membership_of(patient, clinic),
        as_patient=True,
        challenge=ShareLink.Challenge.NONE,
    )
    ingest(clinic, _into(study, _study(name="Jones^Robert"))[0])
    recipient = Client()
    owner = Client()
    owner.force_login(patient)

    opened = recipient.get(f"/s/{token}")
    listed = owner.get(f"/t/{clinic.slug}/shares/")

    assert opened.status_code == 403 and b"This link is paused" in opened.content
    assert str(share.pk) in listed.content.decode()
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.SHARE_REFUSED)
    assert event.detail == {"share": str(share.pk), "state": "held"}
