"""The worklist: search kept out of URLs, filters, sort, paging, what each role sees."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import Action, AuditEvent
from imaging.selectors import masked_study_ids
from imaging.services import study_grant, study_grant_revoke, study_set_confidential
from tests.helpers import TEST_ACTOR, membership_of
from tests.imaging_tests.helpers import ingest_study, synthetic_ct


def _study(clinic, **tags):
    tags.setdefault("PatientName", "Doe^Jane")
    tags.setdefault("PatientID", f"PID-{tags['PatientName'][:3]}")
    return ingest_study(clinic, synthetic_ct(slices=1, size=16, tags=tags))


@pytest.fixture
def studies(clinic, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # thumbnails are made after commit
        return _studies(clinic)


def _studies(clinic):
    return {
        "jane": _study(
            clinic,
            PatientName="Doe^Jane",
            PatientID="PID-1",
            AccessionNumber="ACC-100",
            StudyDate="20260105",
            Modality="CT",
            ReferringPhysicianName="House^Gregory",
        ),
        "john": _study(
            clinic,
            PatientName="Roe^John",
            PatientID="PID-2",
            AccessionNumber="ACC-200",
            StudyDate="20260310",
            Modality="MR",
            ReferringPhysicianName="Wilson^James",
        ),
        "ann": _study(
            clinic,
            PatientName="Smith^Ann",
            PatientID="PID-3",
            AccessionNumber="ACC-300",
            StudyDate="20250720",
            Modality="CT",
            ReferringPhysicianName="House^Gregory",
        ),
    }


def _search(client, clinic, **fields):
    data = {"text": "", "date_from": "", "date_to": "", "modality": "", "referring": ""}
    data.update(fields)
    return client.post(f"/t/{clinic.slug}/", data)


def _listed(html: str) -> set[str]:
    return {name for name in ("Doe, Jane", "Roe, John", "Smith, Ann") if name in html}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": "roe"}, {"Roe, John"}),
        ({"text": "PID-3"}, {"Smith, Ann"}),
        ({"text": "ACC-100"}, {"Doe, Jane"}),
        ({"modality": "ct"}, {"Doe, Jane", "Smith, Ann"}),
        ({"referring": "house"}, {"Doe, Jane", "Smith, Ann"}),
        ({"date_from": "2026-01-01", "date_to": "2026-02-01"}, {"Doe, Jane"}),
        ({"date_from": "2026-01-01"}, {"Doe, Jane", "Roe, John"}),
    ],
)
def test_search_filters_by_each_criterion(
    client_for, radiologist, clinic, studies, fields, expected
):
    client = client_for(radiologist)

    posted = _search(client, clinic, **fields)
    listed = client.get(posted["Location"])

    assert posted.status_code == 302
    assert _listed(listed.content.decode()) == expected


def test_search_terms_never_appear_in_the_url(client_for, radiologist, clinic, studies):
    client = client_for(radiologist)

    posted = _search(client, clinic, text="Roe", referring="Wilson")
    listed = client.get(posted["Location"])

    location = posted["Location"]
    assert location.startswith(f"/t/{clinic.slug}/?s=")
    assert "Roe" not in location and "Wilson" not in location
    assert "Roe, John" in listed.content.decode()
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.WORKLIST_VIEWED).last()
    assert event.detail["searched"] is True
    assert event.detail["search_fields"] == ["text", "referring"]
    assert "Roe" not in str(event.detail) and "Wilson" not in str(event.detail)


def test_a_search_id_from_another_session_is_not_honoured(client_for, radiologist, clinic, studies):
    posted = _search(client_for(radiologist), clinic, text="Roe")
    stranger = client_for(radiologist)  # a second session of the same person

    response = stranger.get(posted["Location"])

    assert response.status_code == 302
    assert response["Location"] == f"/t/{clinic.slug}/"


def test_bad_date_range_is_explained_and_lists_nothing_new(
    client_for, radiologist, clinic, studies
):
    response = _search(
        client_for(radiologist), clinic, date_from="2026-05-01", date_to="2026-01-01"
    )

    assert response.status_code == 400
    assert "The start date is after the end date." in response.content.decode()
    # Not the whole worklist under the error, as if the search had found it.
    assert _listed(response.content.decode()) == set()
    assert "Correct the search above to list studies." in response.content.decode()


def test_a_search_keeps_the_order_the_list_was_in(client_for, radiologist, clinic, studies):
    client = client_for(radiologist)
    form = client.get(f"/t/{clinic.slug}/?sort=-patient").content.decode()

    posted = _search(client, clinic, modality="CT", sort="-patient")
    listed = client.get(posted["Location"]).content.decode()

    assert 'name="sort" value="-patient"' in form  # the search form carries the order
    assert posted["Location"].endswith("&sort=-patient")
    assert listed.index("Smith, Ann") < listed.index("Doe, Jane")


def test_sort_by_patient_name_both_ways(client_for, radiologist, clinic, studies):
    client = client_for(radiologist)

    ascending = client.get(f"/t/{clinic.slug}/?sort=patient").content.decode()
    descending = client.get(f"/t/{clinic.slug}/?sort=-patient").content.decode()

    assert ascending.index("Doe, Jane") < ascending.index("Roe, John") < ascending.index("Smith")
    assert descending.index("Smith, Ann") < descending.index("Roe, John") < descending.index("Doe")


def test_default_order_is_newest_study_first(client_for, radiologist, clinic, studies):
    html = client_for(radiologist).get(f"/t/{clinic.slug}/").content.decode()

    assert html.index("Roe, John") < html.index("Doe, Jane") < html.index("Smith, Ann")


def test_pages_keep_the_search(client_for, radiologist, clinic, monkeypatch):
    monkeypatch.setattr("imaging.views.worklist.PAGE_SIZE", 2)
    for index in range(5):
        _study(clinic, PatientName=f"Page^Patient{index}", PatientID=f"PG-{index}")
    _study(clinic, PatientName="Other^Person", PatientID="OT-1")
    client = client_for(radiologist)
    first = client.get(_search(client, clinic, text="page")["Location"])

    second = client.get(f"/t/{clinic.slug}/?s={first.context['search_id']}&page=2")

    assert first.context["page"].paginator.count == 5
    assert "Page 2 of 3" in second.content.decode()
    assert "Other, Person" not in second.content.decode()


def test_front_desk_sees_demographics_without_thumbnails(client_for, front_desk, clinic, studies):
    html = client_for(front_desk).get(f"/t/{clinic.slug}/").content.decode()

    assert "Doe, Jane" in html
    assert "/thumbnail" not in html


def test_radiologist_sees_thumbnails(client_for, radiologist, clinic, studies):
    html = client_for(radiologist).get(f"/t/{clinic.slug}/").content.decode()

    assert f"/t/{clinic.slug}/dicomweb/studies/{studies['jane'].study_uid}/series/" in html


def test_referring_physician_sees_only_granted_studies(
    client_for, radiologist, referring_physician, clinic, studies
):
    study_grant(
        study=studies["john"], grantee=referring_physician, download=False, actor=TEST_ACTOR
    )

    html = client_for(referring_physician).get(f"/t/{clinic.slug}/").content.decode()

    assert _listed(html) == {"Roe, John"}


def test_confidential_study_is_masked_and_not_found_by_name(
    client_for, radiologist, technologist, clinic, studies
):
    study_set_confidential(
        study=studies["jane"], confidential=True, by=radiologist, actor=TEST_ACTOR
    )
    client = client_for(technologist)

    listing = client.get(f"/t/{clinic.slug}/").content.decode()
    searched = client.get(_search(client, clinic, text="Doe")["Location"]).content.decode()

    assert "Confidential study" in listing
    assert "Doe, Jane" not in listing and "PID-1" not in listing
    # The audit tells the masked row (no demographics shown) from the others.
    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.WORKLIST_VIEWED).first()
    assert event.detail["masked"] == [str(studies["jane"].pk)]
    assert len(event.detail["studies"]) == 3
    rows = searched[searched.index("<tbody>") : searched.index("</tbody>")]
    assert "No studies match this search." in rows


def test_marker_of_a_confidential_study_keeps_access(client_for, radiologist, clinic, studies):
    study_set_confidential(
        study=studies["jane"], confidential=True, by=radiologist, actor=TEST_ACTOR
    )

    html = client_for(radiologist).get(f"/t/{clinic.slug}/").content.decode()

    assert "Doe, Jane" in html


def test_outsider_gets_404_for_the_worklist(client_for, other_tenant_all_roles, clinic):
    assert client_for(other_tenant_all_roles).get(f"/t/{clinic.slug}/").status_code == 404


def test_patient_and_admin_roles_cannot_open_the_worklist(
    client_for, patient, tenant_admin, clinic
):
    assert client_for(patient).get(f"/t/{clinic.slug}/").status_code == 403
    assert client_for(tenant_admin).get(f"/t/{clinic.slug}/").status_code == 403


def test_each_worklist_page_is_audited_with_ids_only(client_for, radiologist, clinic, studies):
    client_for(radiologist).get(f"/t/{clinic.slug}/")

    event = AuditEvent.objects.for_tenant(clinic).filter(action=Action.WORKLIST_VIEWED).last()
    assert set(event.detail["studies"]) == {str(s.pk) for s in studies.values()}
    assert "Doe" not in str(event.detail)


def test_dates_are_shown_iso(client_for, radiologist, clinic, studies):
    html = client_for(radiologist).get(f"/t/{clinic.slug}/").content.decode()

    assert dt.date(2026, 1, 5).isoformat() in html


def test_a_study_no_longer_granted_is_masked_for_a_member_who_sees_only_grants(
    referring_physician, clinic, studies
):
    kept, withdrawn = studies["jane"], studies["john"]
    for study in (kept, withdrawn):
        study_grant(study=study, grantee=referring_physician, download=False, actor=TEST_ACTOR)
    study_grant_revoke(study=withdrawn, grantee=referring_physician, actor=TEST_ACTOR)
    membership = membership_of(referring_physician, clinic)

    masked = masked_study_ids(membership=membership, studies=[kept, withdrawn], now=timezone.now())

    assert masked == {withdrawn.pk}


@pytest.mark.django_db
def test_the_worklist_finds_a_name_typed_in_another_case_in_any_script(
    clinic, radiologist, client_for
):
    ingest_study(clinic, synthetic_ct(slices=1, patient_name="Ärzte^Ölaf", patient_id="P-U"))
    ingest_study(clinic, synthetic_ct(slices=1, patient_name="Arzte^Olaf", patient_id="P-A"))

    client = client_for(radiologist)

    page = client.get(_search(client, clinic, text="ärzte^ö")["Location"]).content.decode()

    assert "P-U" in page and "P-A" not in page


def test_a_masked_study_is_not_found_by_its_referring_physician(
    client_for, radiologist, technologist, clinic, studies
):
    study_set_confidential(
        study=studies["jane"], confidential=True, by=radiologist, actor=TEST_ACTOR
    )
    client = client_for(technologist)

    searched = client.get(_search(client, clinic, referring="house")["Location"]).content.decode()

    rows = searched[searched.index("<tbody>") : searched.index("</tbody>")]
    assert "Smith, Ann" in rows and "Confidential study" not in rows


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("patient", ["Confidential study", "Doe, Jane", "Smith, Ann"]),
        ("-patient", ["Smith, Ann", "Doe, Jane", "Confidential study"]),
        ("accession", ["Confidential study", "Doe, Jane", "Smith, Ann"]),
    ],
)
def test_sorting_by_what_a_masked_row_hides_does_not_place_it_by_that(
    client_for, radiologist, technologist, clinic, studies, sort, expected
):
    # Roe sorts between Doe and Smith (ACC-200 between 100 and 300): in that place, the
    # masked row would tell its patient's name (or accession) to a few letters.
    study_set_confidential(
        study=studies["john"], confidential=True, by=radiologist, actor=TEST_ACTOR
    )

    html = client_for(technologist).get(f"/t/{clinic.slug}/?sort={sort}").content.decode()
    marked = client_for(radiologist).get(f"/t/{clinic.slug}/?sort={sort}").content.decode()

    rows = html[html.index("<tbody>") :]
    assert sorted(expected, key=rows.index) == expected
    assert "Confidential study" not in marked  # who may open it sees it by its name
    unmasked = marked[marked.index("<tbody>") :]
    names = ["Doe, Jane", "Roe, John", "Smith, Ann"]
    assert sorted(names, key=unmasked.index) == (names if sort != "-patient" else names[::-1])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": "Doe, Jane"}, {"Doe, Jane"}),  # as the worklist shows it
        ({"text": "Jane Doe"}, {"Doe, Jane"}),
        ({"text": "doe^jane"}, {"Doe, Jane"}),
        ({"text": "Jane Roe"}, set()),  # every word must be in the one name
        ({"referring": "Gregory House"}, {"Doe, Jane", "Smith, Ann"}),
        ({"referring": "House, G"}, {"Doe, Jane", "Smith, Ann"}),
    ],
)
def test_a_name_is_found_however_its_words_are_typed(
    client_for, radiologist, clinic, studies, fields, expected
):
    client = client_for(radiologist)

    listed = client.get(_search(client, clinic, **fields)["Location"])

    assert _listed(listed.content.decode()) == expected


def test_the_modality_filter_matches_whole_modalities(client_for, radiologist, clinic):
    _study(clinic, PatientName="Pet^Paula", PatientID="PT-1", Modality="PT")
    _study(clinic, PatientName="Eye^Otto", PatientID="OPT-1", Modality="OPT")
    client = client_for(radiologist)

    html = client.get(_search(client, clinic, modality="pt")["Location"]).content.decode()

    assert "Pet, Paula" in html and "Eye, Otto" not in html


def test_undated_studies_come_last_and_ties_keep_one_order_across_pages(
    client_for, radiologist, clinic, monkeypatch
):
    monkeypatch.setattr("imaging.views.worklist.PAGE_SIZE", 2)
    undated = _study(clinic, PatientName="Undated^Una", PatientID="UN-1", StudyDate="")
    tied = [
        _study(clinic, PatientName=f"Tied^T{i}", PatientID=f"TI-{i}", StudyDate="20260101")
        for i in range(4)
    ]
    client = client_for(radiologist)

    def listed(sort: str) -> list:
        ids = []
        for page in (1, 2, 3):
            response = client.get(f"/t/{clinic.slug}/?sort={sort}&page={page}")
            ids += [row["study"].pk for row in response.context["rows"]]
        return ids

    newest_first = [s.pk for s in reversed(tied)]
    assert listed("-date") == [*newest_first, undated.pk]
    assert listed("date") == [*[s.pk for s in tied], undated.pk]
    assert listed("modality") == [*newest_first, undated.pk]
