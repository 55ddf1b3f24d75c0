"""QIDO-RS keys PS3.18 requires an origin server to match and return (Tables 10.6.1-5
and 10.6.3-3 to 10.6.3-5): StudyID, the performed procedure step's start date and time,
and BitsAllocated; kept for instances stored before they were indexed too."""

from __future__ import annotations

import io

import pydicom
import pytest
from django.core.management import call_command
from django.test import Client
from pydicom.sequence import Sequence

from imaging.models import Instance, Series, SeriesRequest, Study
from tests.imaging_tests.dicomweb_support import BASE, http, stow_files, token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct

pytestmark = pytest.mark.django_db

PROCEDURE = {
    "StudyID": "S-77",
    "PerformedProcedureStepStartDate": "20260115",
    "PerformedProcedureStepStartTime": "101500",
}


@pytest.fixture
def performed(clinic) -> pydicom.Dataset:
    files = synthetic_ct(slices=2, tags=PROCEDURE)
    for data in files:
        ingest(clinic, data)
    ingest(clinic, synthetic_ct(slices=1, tags={"StudyID": "S-78"})[0])  # another study
    return pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)


def _found(token: str, url: str) -> list[dict]:
    response = http(token).get(f"{BASE}/{url}")
    assert response.status_code in (200, 204), response.content
    return response.json() if response.status_code == 200 else []


def test_a_study_is_found_by_its_study_id_which_results_carry(read_token, performed):
    (study,) = _found(read_token, "studies?StudyID=S-77")

    assert study["0020000D"]["Value"] == [performed.StudyInstanceUID]
    assert study["00200010"] == {"vr": "SH", "Value": ["S-77"]}
    assert _found(read_token, "studies?StudyID=S-7*") and not _found(
        read_token, "studies?StudyID=S-79"
    )


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("PerformedProcedureStepStartDate=20260115", True),
        ("PerformedProcedureStepStartDate=20260101-20260131", True),
        ("PerformedProcedureStepStartDate=20260116-", False),
        ("PerformedProcedureStepStartTime=1000-1030", True),
        ("00400245=1100-", False),
    ],
)
def test_series_are_found_by_when_their_procedure_step_started(
    read_token, performed, query, matches
):
    found = _found(read_token, f"series?{query}")

    assert [s["0020000E"]["Value"][0] for s in found] == (
        [performed.SeriesInstanceUID] if matches else []
    )
    if matches:
        assert found[0]["00400244"] == {"vr": "DA", "Value": ["20260115"]}
        assert found[0]["00400245"] == {"vr": "TM", "Value": ["101500"]}


def test_instance_results_carry_bits_allocated_and_frames_only_for_images(read_token, clinic):
    ingest(clinic, sample_bytes("rtplan.dcm"))
    ingest(clinic, synthetic_ct(slices=1)[0])

    found = _found(read_token, "instances?includefield=BitsAllocated")

    plan = next(i for i in found if i["00080060"]["Value"] == ["RTPLAN"])
    image = next(i for i in found if i is not plan)
    assert plan["00280100"] == {"vr": "US"} and plan["00280008"] == {"vr": "IS"}
    assert image["00280100"] == {"vr": "US", "Value": [16]}
    assert image["00280008"] == {"vr": "IS", "Value": [1]}


def test_a_bad_performed_date_is_a_clear_400(read_token, performed):
    response = http(read_token).get(f"{BASE}/series?PerformedProcedureStepStartDate=2026-01")

    assert response.status_code == 400
    assert "PerformedProcedureStepStartDate" in response.json()["error"]


def test_the_backfill_indexes_what_rows_stored_before_these_keys_lack(
    clinic, other_clinic, read_token, performed
):
    (theirs,) = synthetic_ct(slices=1, tags=PROCEDURE)
    ingest(other_clinic, theirs)
    for tenant in (clinic, other_clinic):  # as the migration left rows stored before it
        Study.objects.for_tenant(tenant).update(study_id="")
        Series.objects.for_tenant(tenant).update(performed_date=None, performed_time="")
        Instance.objects.for_tenant(tenant).update(bits_allocated=None)
    assert not _found(read_token, "studies?StudyID=S-77")

    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())

    assert len(_found(read_token, "studies?StudyID=S-77")) == 1
    (series,) = _found(read_token, "series?PerformedProcedureStepStartDate=20260115")
    assert series["00400245"]["Value"] == ["101500"]
    assert {i["00280100"]["Value"][0] for i in _found(read_token, "instances")} == {16}
    # Another clinic's rows are its own command's to index.
    assert Study.objects.for_tenant(other_clinic).get().study_id == ""


def test_the_upgrade_leaves_instances_without_pixel_data_without_a_frame_count(clinic):
    import importlib

    from django.apps import apps

    upgrade = importlib.import_module("imaging.migrations.0012_frames_null_without_pixels")
    ingest(clinic, sample_bytes("rtplan.dcm"))
    ingest(clinic, synthetic_ct(slices=1)[0])
    rows = Instance.objects.for_tenant(clinic)
    rows.update(number_of_frames=1)  # as recorded before

    upgrade.forward(apps, None)

    assert sorted(rows.values_list("pixel_tag", "number_of_frames")) == [
        ("", None),
        ("7FE00010", 1),
    ]


def _orders(*pairs: tuple[str, str]) -> Sequence:
    items = []
    for step, procedure in pairs:
        item = pydicom.Dataset()
        if step:
            item.ScheduledProcedureStepID = step
        if procedure:
            item.RequestedProcedureID = procedure
        items.append(item)
    return Sequence(items)


@pytest.fixture
def ordered(clinic) -> dict[str, str]:
    """Series by the orders they fulfil: one order, two, and none."""
    uids = {}
    for name, orders in (
        ("one", _orders(("SPS-1", "RP-1"))),
        ("two", _orders(("SPS-2", "RP-2"), ("SPS-3", "RP-3"))),
        ("none", None),
    ):
        tags = {"RequestAttributesSequence": orders} if orders is not None else {}
        (data,) = synthetic_ct(slices=1, tags=tags)
        ingest(clinic, data)
        uids[name] = pydicom.dcmread(io.BytesIO(data)).SeriesInstanceUID
    return uids


def _series_uids(token: str, query: str) -> set[str]:
    return {s["0020000E"]["Value"][0] for s in _found(token, f"series?{query}")}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("RequestAttributesSequence.ScheduledProcedureStepID=SPS-1", {"one"}),
        ("00400275.00400009=SPS-3", {"two"}),
        ("RequestAttributesSequence.RequestedProcedureID=RP-2", {"two"}),
        ("00400275.00401001=RP-*", {"one", "two"}),
        # Both keys must match within one item: SPS-2 and RP-3 are different orders.
        ("00400275.00400009=SPS-2&00400275.00401001=RP-3", set()),
        ("00400275.00400009=SPS-2&00400275.00401001=RP-2", {"two"}),
        ("00400275.00400009=NONE", set()),
    ],
)
def test_series_are_found_by_the_orders_they_fulfil(read_token, ordered, query, expected):
    found = _found(read_token, f"series?{query}")

    uids = [s["0020000E"]["Value"][0] for s in found]
    assert sorted(uids) == sorted(ordered[name] for name in expected)  # each series once


def test_series_results_carry_their_orders(read_token, ordered):
    found = {s["0020000E"]["Value"][0]: s for s in _found(read_token, "series")}

    assert found[ordered["two"]]["00400275"] == {
        "vr": "SQ",
        "Value": [
            {
                "00400009": {"vr": "SH", "Value": ["SPS-2"]},
                "00401001": {"vr": "SH", "Value": ["RP-2"]},
            },
            {
                "00400009": {"vr": "SH", "Value": ["SPS-3"]},
                "00401001": {"vr": "SH", "Value": ["RP-3"]},
            },
        ],
    }
    assert found[ordered["none"]]["00400275"] == {"vr": "SQ"}
    (instance,) = _found(read_token, f"instances?SeriesInstanceUID={ordered['one']}")
    assert instance["00400275"]["Value"][0]["00400009"]["Value"] == ["SPS-1"]


def test_stow_rs_indexes_the_orders_of_each_new_series(read_token, clinic):
    files = [
        synthetic_ct(slices=2, tags={"RequestAttributesSequence": _orders((f"S-{n}", ""))})
        for n in range(3)
    ]

    writer = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:write')}")

    response = stow_files(writer, [data for pair in files for data in pair])

    assert response.status_code == 200, response.content
    for n, pair in enumerate(files):
        series_uid = pydicom.dcmread(io.BytesIO(pair[0])).SeriesInstanceUID
        assert _series_uids(read_token, f"00400275.00400009=S-{n}") == {series_uid}
        (series,) = _found(read_token, f"series?SeriesInstanceUID={series_uid}")
        assert series["00400275"]["Value"] == [
            {"00400009": {"vr": "SH", "Value": [f"S-{n}"]}, "00401001": {"vr": "SH"}}
        ]


def test_another_clinics_orders_are_not_found(read_token, other_clinic):
    (data,) = synthetic_ct(slices=1, tags={"RequestAttributesSequence": _orders(("SPS-X", ""))})
    ingest(other_clinic, data)

    assert not _found(read_token, "series?00400275.00400009=SPS-X")


def test_a_key_of_another_sequence_is_a_clear_400(read_token, ordered):
    response = http(read_token).get(
        f"{BASE}/series?ReferencedStudySequence.ReferencedSOPInstanceUID=1.2.3"
    )

    assert response.status_code == 400
    assert "ReferencedStudySequence.ReferencedSOPInstanceUID" in response.json()["error"]


def test_asking_for_the_orders_by_includefield_draws_no_warning(read_token, ordered):
    response = http(read_token).get(
        f"{BASE}/series?includefield=00400275&includefield=RequestAttributesSequence.RequestedProcedureID"
    )

    assert response.status_code == 200
    assert "Warning" not in response


def test_the_backfill_indexes_the_orders_of_series_stored_before(read_token, ordered, clinic):
    series = Series.objects.for_tenant(clinic)
    series.update(request_attributes=[])  # as the migration left rows stored before it
    SeriesRequest.objects.for_tenant(clinic).delete()
    assert not _series_uids(read_token, "00400275.00400009=SPS-3")

    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())
    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())

    assert _series_uids(read_token, "00400275.00400009=SPS-3") == {ordered["two"]}
    assert SeriesRequest.objects.for_tenant(clinic).count() == 3  # a second run adds none
