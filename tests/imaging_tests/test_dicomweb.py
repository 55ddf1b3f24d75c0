"""DICOMweb with the real dicomweb-client: store, search, retrieve; isolation; bad requests."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pydicom
import pytest

from audit.models import Action, AuditEvent
from audit.verify import chains_verify
from imaging.models import Instance, Series, Study
from imaging.storage import object_delete, storage_for
from tests.imaging_tests.dicomweb_support import BASE, dicomweb, http, instance_url, token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def stored_ct(clinic):
    files = synthetic_ct(slices=3, patient_name="Müller^Jürgen", patient_id="PID-1")
    for data in files:
        ingest(clinic, data)
    return files


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    body = b""
    for content_type, payload in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_RLE.dcm",
        "chrH31.dcm",
        "chrX1.dcm",
    ],
)
def test_store_search_retrieve_with_dicomweb_client(name, clinic, write_token):
    client = dicomweb(write_token)
    dataset = _ds(sample_bytes(name))

    response = client.store_instances([dataset])
    found = client.search_for_studies(search_filters={"StudyInstanceUID": dataset.StudyInstanceUID})
    retrieved = client.retrieve_instance(
        dataset.StudyInstanceUID,
        dataset.SeriesInstanceUID,
        dataset.SOPInstanceUID,
        media_types=(("application/dicom", "*"),),
    )

    assert "ReferencedSOPSequence" in response
    assert len(found) == 1
    # Each component group of the name its own member, as in the instance's metadata.
    assert found[0]["00100010"] == dataset.to_json_dict()["00100010"]
    assert retrieved.file_meta.TransferSyntaxUID == dataset.file_meta.TransferSyntaxUID
    assert retrieved.PixelData == dataset.PixelData
    assert str(retrieved.PatientName) == str(dataset.PatientName)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("patient", "referring"),
    [
        ("=山田^太郎", "Doe^Jane=="),  # no alphabetic group; trailing empty groups
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "=="),  # three groups; groups all empty
        ('<script>"x"\\</script>', ""),  # markup, quotes; a backslash parts two values
    ],
)
def test_names_and_values_in_search_results_are_split_as_in_the_metadata(
    patient, referring, clinic, read_token
):
    (data,) = synthetic_ct(
        slices=1,
        patient_name=patient,
        tags={
            "SpecificCharacterSet": "ISO_IR 192",
            "ReferringPhysicianName": referring,
            "StudyDescription": "Head\\Neck",  # two values, as in the metadata
        },
    )
    ingest(clinic, data)
    ds = _ds(data)

    found = dicomweb(read_token).search_for_studies(
        search_filters={"StudyInstanceUID": ds.StudyInstanceUID}
    )
    metadata = ds.to_json_dict()

    for tag in ("00100010", "00080090", "00081030"):
        assert found[0][tag] == metadata.get(tag, {"vr": "PN"}), tag


@pytest.mark.django_db
def test_byte_exact_round_trip(clinic, write_token):
    (data,) = synthetic_ct(slices=1)
    session = http(write_token)

    stored = session.post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", data)]),
        headers={"Content-Type": STOW_TYPE},
    )
    ds = _ds(data)
    got = session.get(
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )

    assert stored.status_code == 200
    boundary = re.search(r"boundary=([^;]+)", got.headers["Content-Type"])[1]
    part = got.content.split(f"--{boundary}".encode())[1]
    assert part.split(b"\r\n\r\n", 1)[1][:-2] == data


@pytest.mark.django_db
def test_compressed_instance_transcodes_to_explicit_little_endian(clinic, read_token):
    data = sample_bytes("MR_small_jp2klossless.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    retrieved = dicomweb(read_token).retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )

    assert retrieved.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (retrieved.pixel_array == ds.pixel_array).all()


@pytest.mark.django_db
def test_a_compressed_instance_too_large_to_decode_at_once_is_406_not_decoded(
    clinic, read_token, monkeypatch
):
    from imaging.dicomweb.views import wado

    data = sample_bytes("MR_small_jp2klossless.dcm")
    ingest(clinic, data)
    ds = _ds(data)
    monkeypatch.setattr(wado, "MAX_DECODED_BYTES", 64 * 64 * 2 - 1)  # one byte short
    monkeypatch.setattr(pydicom.Dataset, "decompress", lambda *a, **k: pytest.fail("decoded"))

    response = http(read_token).get(
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )

    assert response.status_code == 406
    assert "too large to decode at once" in response.json()["error"]


@pytest.mark.django_db
def test_big_endian_instance_is_retrieved_as_explicit_little_endian(clinic, read_token):
    source = _ds(sample_bytes("MR_small_bigendian.dcm"))
    # A word-valued attribute beside the pixels: its words are big endian in the file.
    table = [1, 258, 65535]
    source.add_new(0x00281201, "OW", np.array(table, dtype=">u2").tobytes())
    out = io.BytesIO()
    source.save_as(out)
    data = out.getvalue()
    ingest(clinic, data)
    stored, reference = _ds(data), _ds(sample_bytes("MR_small.dcm"))

    retrieved = dicomweb(read_token).retrieve_study(stored.StudyInstanceUID)  # the default

    (instance,) = retrieved
    assert instance.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (instance.pixel_array == reference.pixel_array).all()
    for element in reference:
        if element.keyword and element.keyword != "PixelData" and element.keyword in instance:
            assert instance[element.keyword].value == element.value, element.keyword
    lut = instance.RedPaletteColorLookupTableData
    assert np.frombuffer(lut, dtype="<u2").tolist() == table


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("big", "little"),
    [
        ("rtdose_expb.dcm", "rtdose.dcm"),  # 32-bit pixels, 15 frames
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),  # 8-bit RGB held as OW
    ],
)
def test_big_endian_pixel_data_is_transcoded_bit_for_bit(clinic, read_token, big, little):
    stored = _ds(sample_bytes(big))
    ingest(clinic, sample_bytes(big))

    (instance,) = dicomweb(read_token).retrieve_study(stored.StudyInstanceUID)

    assert instance.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert instance.PixelData == _ds(sample_bytes(little)).PixelData


@pytest.mark.django_db
def test_unavailable_transfer_syntax_is_406(clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])

    response = http(read_token).get(
        f"{BASE}/studies/{ds.StudyInstanceUID}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )

    assert response.status_code == 406
    assert "Transcoding" in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5',
    ],
)
def test_a_later_acceptable_transfer_syntax_is_served(clinic, read_token, stored_ct, accept):
    ds = _ds(stored_ct[0])

    response = http(read_token).get(
        f"{BASE}/studies/{ds.StudyInstanceUID}", headers={"Accept": accept}
    )

    assert response.status_code == 200
    assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in response.text[:2000]


@pytest.mark.django_db
def test_a_transfer_syntax_refused_with_q_0_is_not_served(clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*; q=0'

    response = http(read_token).get(
        f"{BASE}/studies/{ds.StudyInstanceUID}", headers={"Accept": accept}
    )

    assert response.status_code == 406


@pytest.mark.django_db
def test_qido_matching(clinic, read_token, stored_ct):
    client = dicomweb(read_token)
    study_uid = _ds(stored_ct[0]).StudyInstanceUID

    by_name = client.search_for_studies(search_filters={"PatientName": "Mül*"})
    by_id = client.search_for_studies(search_filters={"PatientID": "PID-1"})
    by_date = client.search_for_studies(search_filters={"StudyDate": "20250101-20261231"})
    outside = client.search_for_studies(search_filters={"StudyDate": "19900101-19901231"})
    by_modality = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    by_wildcards = [
        len(client.search_for_studies(search_filters={"ModalitiesInStudy": value}))
        for value in ("C*", "?T", "MR,C?", "*", "M*", "CT?", "C" + "*" * 40)
    ]
    series = client.search_for_series(study_uid)
    instances = client.search_for_instances(study_uid, limit=2, offset=1)

    assert [s["0020000D"]["Value"][0] for s in by_name] == [study_uid]
    assert len(by_id) == len(by_date) == len(by_modality) == 1
    assert by_wildcards == [1, 1, 1, 1, 0, 0, 1]  # a run of * is one
    assert outside == []
    assert series[0]["00201209"]["Value"] == [3]
    assert len(instances) == 2
    assert by_id[0]["00201208"] == {"vr": "IS", "Value": [3]}


@pytest.mark.django_db
def test_metadata_has_no_pixel_data_but_a_bulk_data_uri(clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])

    metadata = dicomweb(read_token).retrieve_series_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID
    )

    assert len(metadata) == 3
    assert metadata[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert "InlineBinary" not in metadata[0]["7FE00010"]
    assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"{BASE}/studies/")


def test_qido_results_at_each_level_carry_their_attributes_and_retrieve_url(
    clinic, read_token, stored_ct
):
    ds = _ds(stored_ct[0])
    session = http(read_token)
    study_url = f"{BASE}/studies/{ds.StudyInstanceUID}"
    series_url = f"{study_url}/series/{ds.SeriesInstanceUID}"

    (study,) = session.get(f"{BASE}/studies?PatientID=PID-1").json()
    (series,) = session.get(f"{BASE}/series?PatientName=M*").json()
    (instance,) = session.get(f"{BASE}/instances?SOPInstanceUID={ds.SOPInstanceUID}").json()

    for result in (study, series, instance):
        assert list(result) == sorted(result)  # tag order, as PS3.18 lists them
        assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}
        assert result["00100020"] == {"vr": "LO", "Value": ["PID-1"]}
        assert result["00080020"]["vr"] == "DA" and len(result["00080020"]["Value"][0]) == 8
        assert result["0020000D"]["Value"] == [ds.StudyInstanceUID]
    assert study["00081190"]["Value"] == [study_url]
    assert study["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert series["00081190"]["Value"] == [series_url]
    assert series["0020000E"]["Value"] == [ds.SeriesInstanceUID]
    assert series["00201209"] == {"vr": "IS", "Value": [3]}
    assert instance["00081190"]["Value"] == [f"{series_url}/instances/{ds.SOPInstanceUID}"]
    assert instance["00280010"] == {"vr": "US", "Value": [int(ds.Rows)]}
    assert instance["00080016"]["Value"] == [str(ds.SOPClassUID)]


def test_qido_results_stay_valid_json_with_quotes_markup_and_non_ascii(clinic, read_token):
    name, description = 'O"Brien^<script>alert(1)</script>', 'Knee "left"\\Ärztin'
    for data in synthetic_ct(
        slices=1, patient_name=name, patient_id="Q-1", tags={"StudyDescription": description}
    ):
        ingest(clinic, data)

    response = http(read_token).get(f"{BASE}/studies?PatientID=Q-1")

    (study,) = json.loads(response.content)
    assert study["00100010"]["Value"] == [{"Alphabetic": name}]
    assert study["00081030"]["Value"] == description.split("\\")  # a backslash parts values
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # never sniffed as HTML


@pytest.mark.django_db
def test_each_result_carries_its_own_names_when_names_repeat(clinic, read_token):
    # Names repeated within one answer are written once; no row may get another's.
    people = [("Doe^Jane", "Ref^One"), ("Roe^Rick", "Ref^One"), ("Doe^Jane", "Ref^Two")]
    for index, (patient, referring) in enumerate(people * 2):
        ingest(
            clinic,
            synthetic_ct(
                slices=1,
                patient_name=patient,
                patient_id=f"REP-{patient}",
                tags={"ReferringPhysicianName": referring, "AccessionNumber": f"ACC{index}"},
            )[0],
        )

    found = dicomweb(read_token).search_for_studies(search_filters={"PatientID": "REP-*"})

    names = {
        (
            study["00080050"]["Value"][0],
            study["00100010"]["Value"][0]["Alphabetic"],
            study["00080090"]["Value"][0]["Alphabetic"],
        )
        for study in found
    }
    assert names == {
        (f"ACC{index}", patient, referring) for index, (patient, referring) in enumerate(people * 2)
    }


@pytest.mark.django_db
def test_another_clinics_token_sees_nothing(clinic, outsider_token, stored_ct):
    ds = _ds(stored_ct[0])
    session = http(outsider_token)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    urls = [
        f"{BASE}/studies/{study}",
        f"{BASE}/studies/{study}/metadata",
        f"{BASE}/studies/{study}/series",
        f"{BASE}/studies/{study}/instances",
        f"{BASE}/studies/{study}/series/{series}",
        f"{BASE}/studies/{study}/series/{series}/metadata",
        f"{BASE}/studies/{study}/series/{series}/instances",
        f"{BASE}/studies/{study}/series/{series}/instances/{sop}",
        f"{BASE}/studies/{study}/series/{series}/instances/{sop}/metadata",
        f"{BASE}/studies/{study}/series/{series}/instances/{sop}/frames/1",
        f"{BASE}/studies/{study}/series/{series}/instances/{sop}/rendered",
        f"{BASE}/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered",
    ]

    statuses = {url: session.get(url).status_code for url in urls}
    for url in urls[-3:]:  # the same answer as for an instance that does not exist
        assert session.get(url).content == session.get(url.replace(sop, "1.2.3.4")).content
    searches = [
        session.get(f"{BASE}/{level}?StudyInstanceUID={study}").status_code
        for level in ("studies", "series", "instances")
    ]

    assert set(statuses.values()) == {404}
    assert searches == [204, 204, 204]


@pytest.mark.django_db
def test_read_only_token_cannot_store(clinic, read_token):
    response = http(read_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", synthetic_ct(slices=1)[0])]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 403
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_missing_revoked_and_expired_tokens_get_401(clinic):
    from django.utils import timezone

    from audit.actors import Actor
    from tenants.models import ApiToken
    from tenants.tokens import api_token_revoke

    revoked = token_for(clinic, "dicomweb:read")
    api_token_revoke(
        token=ApiToken.objects.for_tenant(clinic).get(prefix=revoked.split("_")[1]),
        actor=Actor.system("tests"),
        now=timezone.now(),
    )
    expired = token_for(clinic, "dicomweb:read", expires_days=1)
    ApiToken.objects.for_tenant(clinic).filter(prefix=expired.split("_")[1]).update(
        expires_at=timezone.now() - timezone.timedelta(seconds=1)
    )

    for token in (None, revoked, expired, "ptk_nothere_x", "garbage"):
        response = http(token).get(f"{BASE}/studies")
        assert response.status_code == 401, token
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=-1", "must be from 0 to"),
        ("limit=lots", "whole number"),
        ("offset=-5", "must be from 0 to"),
        ("offset=99999999999999999999", "must be from 0 to 2147483647"),
        ("PatientID=P%00", "may not contain NUL"),
        ("StudyTime=25-", "not a time"),
        ("StudyTime=abc", "not a time"),
        ("StudyTime=2400", "not a time"),
        ("ModalitiesInStudy=" + "C?" * 20, "at most"),
        ("StudyDate=2026-13-45", "not a date"),
        ("StudyDate=20261345", "not a valid date"),
        ("NoSuchAttribute=1", "Unknown or unsupported"),
        ("7FE00010=1", "cannot be used"),
        ("fuzzymatching=maybe", "must be true or false"),
        ("emptyvaluematching=1", "must be true or false"),
        ("SOPInstanceUID=1.2.3", "cannot be matched at the study level"),
    ],
)
def test_bad_queries_get_a_clear_400(query, message, clinic, read_token):
    response = http(read_token).get(f"{BASE}/studies?{query}")

    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.django_db
def test_includefield_naming_what_the_server_does_not_keep_is_answered_with_a_warning(
    clinic, read_token, stored_ct
):
    study = _ds(stored_ct[0]).StudyInstanceUID

    # What OHIF asks for a study's series list: SeriesDate is not kept here.
    response = http(read_token).get(
        f"{BASE}/studies/{study}/series?includefield=0008103E,00080021&includefield=InstitutionName"
    )

    assert response.status_code == 200
    assert response.json()[0]["0008103E"]["vr"] == "LO"
    assert response.headers["Warning"].startswith('299 testserver "includefield: 00080021')
    assert "InstitutionName" in response.headers["Warning"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["emptyvaluematching", "multiplevaluematching"])
def test_a_matching_feature_not_offered_runs_the_search_without_it_and_says_so(
    name, clinic, read_token, stored_ct
):
    asked = http(read_token).get(f"{BASE}/studies?{name}=true")
    declined = http(read_token).get(f"{BASE}/studies?{name}=false")

    assert asked.status_code == declined.status_code == 200
    assert asked.json() == declined.json()
    assert f"{name} is not supported" in asked.headers["Warning"]
    assert "Warning" not in declined.headers


@pytest.mark.django_db
def test_an_unreadable_includefield_is_not_echoed_in_the_warning(clinic, read_token, stored_ct):
    response = http(read_token).get(f'{BASE}/studies?includefield=<b>"x"</b>')

    assert response.status_code == 200
    assert response.headers["Warning"].startswith('299 testserver "includefield: (unreadable)')


@pytest.mark.django_db
def test_an_instance_number_beyond_any_column_is_a_clear_400(clinic, read_token, stored_ct):
    study = _ds(stored_ct[0]).StudyInstanceUID

    response = http(read_token).get(
        f"{BASE}/studies/{study}/instances?InstanceNumber=100000000000000000000"
    )

    assert response.status_code == 400
    assert "InstanceNumber must be from" in response.json()["error"]


@pytest.mark.django_db
def test_time_ranges_stacked_wildcards_and_includefield_by_tag(clinic, read_token):
    times = {"A": "0815", "B": "101200", "C": "101259.5", "D": "120000.25", "E": "23"}
    for accession, time in times.items():
        for data in synthetic_ct(slices=1, tags={"StudyTime": time, "AccessionNumber": accession}):
            ingest(clinic, data)
    client = dicomweb(read_token)

    def found(**filters):
        return sorted(
            s["00080050"]["Value"][0] for s in client.search_for_studies(search_filters=filters)
        )

    assert found(StudyTime="1012-1012") == ["B", "C"]  # the whole minute
    assert found(StudyTime="081500-120000") == ["A", "B", "C", "D"]  # to 12:00:00.999999
    assert found(StudyTime="-0815") == ["A"]
    assert found(StudyTime="1200-") == ["D", "E"]
    # A single time is the span its precision gives, as the range of it would be.
    assert found(StudyTime="101200") == ["B"]
    assert found(StudyTime="1012") == ["B", "C"]
    assert found(StudyTime="101259") == ["C"]
    assert found(StudyTime="101200.000") == ["B"]
    assert found(AccessionNumber="*" * 40 + "A") == ["A"]
    by_tag = http(read_token).get(f"{BASE}/studies?includefield=00201208,00081190")
    assert by_tag.status_code == 200


@pytest.mark.django_db
def test_percent_encoded_values_and_includefield_all(clinic, read_token, stored_ct):
    response = http(read_token).get(
        f"{BASE}/studies?PatientName=M%C3%BCller%5EJ%C3%BCrgen&includefield=all"
    )

    assert response.status_code == 200
    assert len(response.json()) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b"{}", 415),
        ('multipart/related; type="application/dicom"', b"--x\r\n\r\n", 400),
        ('multipart/related; type="application/dicom"; boundary=nothere', b"junk", 400),
        ('multipart/related; type="image/png"; boundary=b0undary', b"", 415),
    ],
)
def test_malformed_stow_requests_get_4xx(content_type, body, status, clinic, write_token):
    response = http(write_token).post(
        f"{BASE}/studies", data=body, headers={"Content-Type": content_type}
    )

    assert response.status_code == status
    assert response.json()["error"]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_garbage_part_beside_good_ones_is_202_with_failures(clinic, write_token):
    good = synthetic_ct(slices=2)
    body = _multipart(
        [
            ("application/dicom", good[0]),
            ("application/dicom", b"garbage" * 50),
            ("application/dicom", good[1]),
        ]
    )

    response = http(write_token).post(
        f"{BASE}/studies", data=body, headers={"Content-Type": STOW_TYPE}
    )

    assert response.status_code == 202
    assert len(response.json()["00081199"]["Value"]) == 2
    # A part that names no instance is one of the Other Failures, not a Failed SOP item.
    assert "00081198" not in response.json()
    assert response.json()["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0xC000]}}]
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_the_response_names_the_study_stored_into_or_an_empty_retrieve_url(clinic, write_token):
    one = synthetic_ct(slices=2)
    two = synthetic_ct(slices=1) + synthetic_ct(slices=1)
    session = http(write_token)

    single = session.post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in one]),
        headers={"Content-Type": STOW_TYPE},
    )
    several = session.post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in two]),
        headers={"Content-Type": STOW_TYPE},
    )

    study_uid = _ds(one[0]).StudyInstanceUID
    assert single.json()["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/{study_uid}"]}
    assert several.status_code == 200
    assert several.json()["00081190"] == {"vr": "UR"}  # Type 2: present, empty


@pytest.mark.django_db
def test_the_part_type_is_matched_without_regard_to_case(clinic, write_token):
    (data,) = synthetic_ct(slices=1)

    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", data)]),
        headers={"Content-Type": 'Multipart/Related; TYPE="Application/DICOM"; boundary=b0undary'},
    )

    assert response.status_code == 200
    assert Instance.objects.for_tenant(clinic).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/studies/1.2.3%20x", {}, 400),
        ("/studies/not-a-uid", {}, 400),
        ("/studies", {"Content-Encoding": "gzip"}, 415),
    ],
)
def test_a_store_the_server_cannot_take_is_refused_whole(
    clinic, write_token, path, headers, status
):
    (data,) = synthetic_ct(slices=1)

    response = http(write_token).post(
        f"{BASE}{path}",
        data=_multipart([("application/dicom", data)]),
        headers={"Content-Type": STOW_TYPE, **headers},
    )

    assert response.status_code == status
    assert response.json()["error"]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_a_batch_that_fails_to_store_is_reported_beside_the_batches_stored(
    clinic, write_token, settings, monkeypatch
):
    from imaging import ingest as ingest_module

    settings.STOW_BATCH_INSTANCES = 2
    files = synthetic_ct(slices=4)
    real_write = ingest_module.object_write_many
    calls = []

    def second_batch_fails(storage, objects):
        calls.append(len(objects))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(storage, objects)

    monkeypatch.setattr(ingest_module, "object_write_many", second_batch_fails)

    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in files]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 202
    stored = [i["00081155"]["Value"][0] for i in response.json()["00081199"]["Value"]]
    failed = response.json()["00081198"]["Value"]
    assert stored == [_ds(f).SOPInstanceUID for f in files[:2]]
    assert [i["00081155"]["Value"][0] for i in failed] == [_ds(f).SOPInstanceUID for f in files[2:]]
    assert {i["00081197"]["Value"][0] for i in failed} == {0x0110}
    rows = Instance.objects.for_tenant(clinic).values_list("sop_instance_uid", flat=True)
    assert sorted(rows) == sorted(stored)


@pytest.mark.django_db
def test_the_warning_header_says_why_parts_failed_most_frequent_first(clinic, write_token):
    files = synthetic_ct(slices=3)
    ingest(clinic, files[0])
    changed = _ds(files[0])
    changed.PatientName = "Changed^Content"
    buffer = io.BytesIO()
    changed.save_as(buffer, enforce_file_format=True)
    script = b"<script>alert(1)</script>"

    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart(
            [
                ("application/dicom", files[1]),
                ("application/dicom", buffer.getvalue()),
                ("application/dicom", b"not DICOM at all"),
                ("application/dicom", script),
                ("text/plain", b"Doe^Jane"),
            ]
        ),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 202
    warning = response.headers["Warning"]
    fields = re.findall(r'299 testserver "([^"]*)"', warning)
    assert len(fields) == 3, warning
    assert fields[0] == "File is too short to be a DICOM file. (2 parts)"
    assert any("already stored with different content" in f for f in fields), warning
    assert any("not application/dicom" in f for f in fields), warning
    assert "script" not in warning and "Doe" not in warning and "Changed" not in warning


@pytest.mark.django_db
def test_a_parsers_message_quoting_a_value_reaches_neither_the_warning_nor_the_log(
    clinic, write_token, monkeypatch, caplog
):
    import logging

    from imaging import dicom

    def parser_quoting_a_value(*args, **kwargs):
        raise ValueError("Invalid value for PN: 'Doe^Jane'")

    monkeypatch.setattr(dicom.pydicom, "dcmread", parser_quoting_a_value)

    with caplog.at_level(logging.DEBUG):
        response = http(write_token).post(
            f"{BASE}/studies",
            data=_multipart([("application/dicom", synthetic_ct(slices=1)[0])]),
            headers={"Content-Type": STOW_TYPE},
        )

    assert response.status_code == 409
    assert "could not be parsed as DICOM" in response.headers["Warning"]
    assert "Doe" not in response.headers["Warning"]
    assert "Doe" not in caplog.text


@pytest.mark.django_db
def test_a_store_with_nothing_failed_has_no_warning(clinic, write_token):
    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in synthetic_ct(slices=2)]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 200
    assert "Warning" not in response.headers


@pytest.mark.django_db
def test_a_part_failing_in_a_batch_stored_one_at_a_time_is_the_only_failed_one(
    clinic, write_token, monkeypatch
):
    from tests.imaging_tests.helpers import second_write_fails

    files = synthetic_ct(slices=3)
    ingest(clinic, files[0])  # the duplicate sends the batch down the one-at-a-time path
    second_write_fails(monkeypatch)

    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in files]),
        headers={"Content-Type": STOW_TYPE},
    )

    body = response.json()
    referenced = [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]]
    failed = body["00081198"]["Value"]
    sops = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in files]
    assert response.status_code == 202
    assert referenced == [sops[0], sops[1]]
    assert [(i["00081155"]["Value"][0], i["00081197"]["Value"][0]) for i in failed] == [
        (sops[2], 0x0110)
    ]
    assert Instance.objects.for_tenant(clinic).count() == 2


@pytest.mark.django_db
def test_a_failed_batch_is_logged_without_the_values_its_error_quotes(
    clinic, write_token, monkeypatch, caplog
):
    from imaging import ingest as ingest_module

    def fails_quoting_a_row(storage, objects):
        raise RuntimeError("duplicate key: Key (patient_id)=(SYN-0001) already exists")

    monkeypatch.setattr(ingest_module, "object_write_many", fails_quoting_a_row)

    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", d) for d in synthetic_ct(slices=3)]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 409
    assert "ingest failed to store" in caplog.text
    assert "RuntimeError" in caplog.text
    assert "SYN-0001" not in caplog.text


@pytest.mark.django_db
def test_a_resend_through_another_toolkit_is_stored_once_and_answered_as_stored(
    clinic, write_token
):
    (data,) = synthetic_ct(slices=1)
    forwarded = _ds(data)
    forwarded.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.9999.2"
    forwarded.file_meta.SourceApplicationEntityTitle = "ROUTER"
    buffer = io.BytesIO()
    forwarded.save_as(buffer, enforce_file_format=True)
    session = http(write_token)
    session.post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", data)]),
        headers={"Content-Type": STOW_TYPE},
    )

    response = session.post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", buffer.getvalue())]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 200
    assert "00081198" not in response.json()
    (stored,) = response.json()["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [forwarded.SOPInstanceUID]
    assert Instance.objects.for_tenant(clinic).count() == 1


def _stow_dataset(token: str, ds: pydicom.Dataset):
    """STOW-RS one data set, written as explicit VR little endian whatever it says."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return http(token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", buffer.getvalue())]),
        headers={"Content-Type": STOW_TYPE},
    )


@pytest.mark.django_db
def test_a_failed_item_for_a_file_without_a_class_uid_still_names_the_class_unknown(
    clinic, write_token
):
    ds = _ds(synthetic_ct(slices=1)[0])
    del ds.SOPClassUID

    response = _stow_dataset(write_token, ds)

    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081150"] == {"vr": "UI"}
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_a_transfer_syntax_the_server_does_not_know_is_failure_c122(clinic, write_token):
    ds = _ds(synthetic_ct(slices=1)[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"

    response = _stow_dataset(write_token, ds)

    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xC122]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_a_dicomdir_sent_as_an_instance_is_failure_0122_with_its_reason(clinic, write_token):
    response = http(write_token).post(
        f"{BASE}/studies",
        data=_multipart([("application/dicom", sample_bytes("DICOMDIR"))]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 409
    # Other failures: a DICOMDIR names no SOP instance of its own.
    assert response.json()["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0x0122]}}]
    assert "DICOMDIR" in response.headers["Warning"]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_all_parts_failing_is_409_and_study_mismatch_is_reported(clinic, write_token):
    (data,) = synthetic_ct(slices=1)
    response = http(write_token).post(
        f"{BASE}/studies/1.2.3.999",
        data=_multipart([("application/dicom", data)]),
        headers={"Content-Type": STOW_TYPE},
    )

    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


@pytest.mark.django_db
def test_every_store_search_and_retrieve_is_audited_without_phi(clinic, write_token, stored_ct):
    client = dicomweb(write_token)
    ds = _ds(stored_ct[0])
    client.search_for_studies()
    client.retrieve_study(ds.StudyInstanceUID)

    events = AuditEvent.objects.for_tenant(clinic).filter(actor_type="api_token")
    actions = set(events.values_list("action", flat=True))

    assert {Action.DICOMWEB_SEARCH, Action.DICOMWEB_RETRIEVE} <= actions
    for event in events:
        assert "Müller" not in str(event.detail)


@pytest.mark.django_db
def test_a_read_of_several_series_names_its_study_and_series(clinic, read_token):
    study_uid = "1.2.826.0.1.3680043.8.498.4242"
    for _ in range(2):
        for data in synthetic_ct(slices=1, study_uid=study_uid):
            ingest(clinic, data)
    study = Study.objects.for_tenant(clinic).get(study_uid=study_uid)
    series = Series.objects.for_tenant(clinic).filter(study=study)

    dicomweb(read_token).retrieve_study(study_uid)
    http(read_token).get(f"{BASE}/studies/{study_uid}/metadata")

    retrieve, metadata = (
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.DICOMWEB_RETRIEVE)
        .order_by("seq")
    )
    for event in (retrieve, metadata):
        assert (event.target_type, event.target_id) == ("imaging.study", str(study.pk))
        assert sorted(event.detail["series"]) == sorted(str(s.pk) for s in series)
    assert retrieve.detail["instances"] == metadata.detail["metadata"] == 2


@pytest.mark.django_db
def test_frames_single_and_list(clinic, read_token):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    frames = dicomweb(read_token).retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[2, 1]
    )

    assert frames == [ds.pixel_array[1].tobytes(), ds.pixel_array[0].tobytes()]


@pytest.mark.django_db
def test_missing_frame_is_404_and_bad_list_is_400(clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])
    base = instance_url(ds)
    session = http(read_token)

    assert session.get(f"{base}/frames/5").status_code == 404
    assert session.get(f"{base}/frames/one").status_code == 400
    assert session.get(f"{base}/frames/0").status_code == 400
    repeated = session.get(f"{base}/frames/" + ",".join(["1"] * 2000))
    assert repeated.status_code == 400
    assert "once" in repeated.json()["error"]


@pytest.mark.django_db
def test_a_frame_list_may_be_separated_by_spaces(clinic, read_token):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    response = http(read_token).get(f"{instance_url(ds)}/frames/2%201")

    assert response.status_code == 200
    assert response.content.count(ds.pixel_array[1].tobytes()) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("frames", "status"), [("2,1", 400), ("1,9", 400), ("9", 404)])
def test_a_rendered_frame_list_names_one_frame_that_exists(frames, status, clinic, read_token):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    response = http(read_token).get(f"{instance_url(ds)}/frames/{frames}/rendered")

    assert response.status_code == status
    if status == 400:
        assert "ask for each frame on its own" in response.json()["error"]
    assert (
        not AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_RETRIEVE).exists()
    )


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["frames/1", "rendered", "frames/1/rendered"])
def test_frames_of_an_instance_without_pixel_data_are_a_404_saying_so(suffix, clinic, read_token):
    data = sample_bytes("rtplan.dcm")
    ingest(clinic, data)

    response = http(read_token).get(f"{instance_url(_ds(data))}/{suffix}")

    assert response.status_code == 404
    assert response.json()["error"] == "The instance has no pixel data."
    assert (
        not AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_RETRIEVE).exists()
    )


@pytest.mark.django_db
def test_rendered_jpeg_and_png_with_window_and_viewport(clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])
    client = dicomweb(read_token)
    ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    jpeg = client.retrieve_instance_rendered(*ids, params={"window": "40,400", "viewport": "32,32"})
    png = client.retrieve_instance_rendered(*ids, media_types=("image/png",))
    frame = client.retrieve_instance_frames_rendered(*ids, frame_numbers=[1])
    linear = client.retrieve_instance_rendered(
        *ids, media_types=("image/png",), params={"window": "40,400,linear"}
    )
    plain = client.retrieve_instance_rendered(
        *ids, media_types=("image/png",), params={"window": "40,400"}
    )

    from PIL import Image

    assert linear == plain  # the function PS3.18 names, and the one drawn
    assert jpeg[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(jpeg)).size == (32, 32)
    assert png[:4] == b"\x89PNG"
    assert frame[:2] == b"\xff\xd8"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [
        "window=40",
        "window=40,0",
        "window=nan,nan",
        "window=1,inf",
        "window=1e309,1",
        "window=40,400,sigmoid",  # only LINEAR is drawn
        "window=40,400,linear,x",
        "viewport=0,10",
        "viewport=10,10,0,0",  # two or six values
        "viewport=10,10,-1,0,5,5",  # the region starts inside the image
        "viewport=10,10,0,0,0,5",  # and is not empty
        "viewport=10,10,0,0,1.5,5",
        "quality=101",
    ],
)
def test_bad_rendering_parameters_are_400(params, clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered?{params}"
    )

    response = http(read_token).get(url)

    assert response.status_code == 400
    assert "rendering parameters" in response.json()["error"]


def _halves(clinic) -> pydicom.Dataset:
    """An instance black on its left half and white on its right, 64 by 64."""
    (data,) = synthetic_ct(slices=1, size=64)
    ds = _ds(data)
    pixels = np.zeros((64, 64), dtype=np.uint16)
    pixels[:, 32:] = 4095
    ds.PixelData, ds.RescaleIntercept = pixels.tobytes(), 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    ingest(clinic, buffer.getvalue())
    return ds


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("viewport", "size", "left", "right"),
    [
        ("128,128", (128, 128), 0, 255),  # scaled up to fit, as PS3.18 asks
        ("128,128,0,0,32,64", (64, 128), 0, 0),  # the left half only
        ("64,64,64,0,-64,64", (64, 64), 255, 0),  # the whole image, mirrored
        ("64,64,32,0,,", (32, 64), 255, 255),  # from x 32 to the end
    ],
)
def test_a_viewport_region_is_cropped_flipped_and_scaled_to_fit(
    viewport, size, left, right, clinic, read_token
):
    from PIL import Image

    ds = _halves(clinic)
    url = f"{instance_url(ds)}/rendered?viewport={viewport}"

    image = Image.open(
        io.BytesIO(http(read_token).get(url, headers={"Accept": "image/png"}).content)
    )

    grey = np.asarray(image.convert("L"))
    assert image.size == size
    assert abs(int(grey[size[1] // 2, 1]) - left) <= 2
    assert abs(int(grey[size[1] // 2, -2]) - right) <= 2


@pytest.mark.django_db
@pytest.mark.parametrize("frames", ["1_0", "+1", "\u0661"])  # int() reads each as a number
def test_frame_numbers_are_plain_digits(frames, clinic, read_token, stored_ct):
    ds = _ds(stored_ct[0])

    response = http(read_token).get(f"{instance_url(ds)}/frames/{frames}")

    assert response.status_code == 400
    assert "Frame numbers must be" in response.json()["error"]


@pytest.mark.django_db
def test_study_and_series_thumbnails(
    clinic, read_token, outsider_token, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        (data,) = synthetic_ct(slices=1)
        ingest(clinic, data)
    ds = _ds(data)

    study = http(read_token).get(f"{BASE}/studies/{ds.StudyInstanceUID}/thumbnail")
    series = http(read_token).get(
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"
    )
    outsider = http(outsider_token).get(f"{BASE}/studies/{ds.StudyInstanceUID}/thumbnail")

    assert study.status_code == series.status_code == 200
    assert study.content[:4] == b"\x89PNG"
    assert outsider.status_code == 404


@pytest.mark.django_db
def test_a_lost_thumbnail_object_is_a_clear_audited_error(
    clinic, read_token, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        (data,) = synthetic_ct(slices=1)
        ingest(clinic, data)
    ds = _ds(data)
    series = Series.objects.for_tenant(clinic).get()
    object_delete(storage_for(clinic), series.thumbnail_key)

    response = http(read_token).get(f"{BASE}/studies/{ds.StudyInstanceUID}/thumbnail")

    assert response.status_code == 500
    assert "integrity check" in response.json()["error"]
    failed = AuditEvent.objects.for_tenant(clinic).get(action=Action.INTEGRITY_FAILED)
    assert (failed.target_id, failed.detail) == (str(series.pk), {"reason": "object missing"})


@pytest.mark.django_db
def test_a_frame_that_cannot_be_rendered_is_a_406_audited_as_not_served(clinic, read_token):
    # 12-bit JPEG Extended needs a codec (GDCM) this build does not ship.
    data = sample_bytes("JPEG-lossy.dcm")
    ingest(clinic, data)
    ds = _ds(data)
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1/rendered"
    )

    response = http(read_token).get(url, headers={"Accept": "image/jpeg"})

    assert response.status_code == 406
    unserved = AuditEvent.objects.for_tenant(clinic).order_by("-seq").first()
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert unserved.detail == {"rendered": 1, "reason": "not_decodable"}
    assert all(report.intact for report in chains_verify(tenant_slug=clinic.slug))


@pytest.mark.django_db
def test_a_frame_the_object_lacks_is_a_404_audited_as_no_such_frame(clinic, read_token):
    # The row says three frames; the stored object, which wins, has one.
    data = synthetic_ct(slices=1)[0]
    ingest(clinic, data)
    ds = _ds(data)
    Instance.objects.for_tenant(clinic).update(number_of_frames=3)

    response = http(read_token).get(f"{instance_url(ds)}/frames/2/rendered")

    assert response.status_code == 404 and b"frame 2 does not exist" in response.content
    unserved = AuditEvent.objects.for_tenant(clinic).order_by("-seq").first()
    assert (unserved.action, unserved.outcome) == (Action.DICOMWEB_RETRIEVE, "failure")
    assert unserved.detail == {"rendered": 1, "reason": "no_such_frame"}


@pytest.mark.django_db
def test_outsider_gets_404_for_frames_and_rendered(clinic, outsider_token, stored_ct):
    ds = _ds(stored_ct[0])
    base = instance_url(ds)
    session = http(outsider_token)

    statuses = [
        session.get(f"{base}/{suffix}").status_code
        for suffix in ("frames/1", "rendered", "frames/1/rendered")
    ]

    assert statuses == [404, 404, 404]


@pytest.mark.django_db
def test_cors_for_a_viewer_the_clinic_allows(clinic, other_clinic, read_token, stored_ct):
    from django.test import Client

    clinic.cors_allowed_origins = "https://viewer.north.example\n"
    clinic.save()
    client = Client()

    preflight = client.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.north.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    allowed = client.get(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.north.example",
        HTTP_AUTHORIZATION=f"Bearer {read_token}",
    )
    stranger = client.get(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://evil.example",
        HTTP_AUTHORIZATION=f"Bearer {read_token}",
    )
    stranger_preflight = client.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    other = token_for(other_clinic, "dicomweb:read")
    wrong_clinic = client.get(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.north.example",
        HTTP_AUTHORIZATION=f"Bearer {other}",
    )

    assert preflight.status_code == 204
    assert "Authorization" in preflight["Access-Control-Allow-Headers"]
    assert allowed["Access-Control-Allow-Origin"] == "https://viewer.north.example"
    assert "Access-Control-Allow-Credentials" not in allowed
    # The answer varies by the Accept header still, as well as by the origin.
    assert {v.strip() for v in allowed["Vary"].split(",")} >= {"Accept", "Origin"}
    assert "Access-Control-Allow-Origin" not in stranger
    assert stranger_preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in wrong_clinic


@pytest.mark.django_db
def test_cors_origins_are_validated(clinic):
    from django.core.exceptions import ValidationError

    clinic.cors_allowed_origins = "javascript:alert(1)"

    with pytest.raises(ValidationError):
        clinic.full_clean()


@pytest.mark.django_db
def test_requests_beyond_the_token_rate_limit_get_429(clinic, read_token, settings, monkeypatch):
    from tests.helpers import within_one_minute

    settings.API_RATE_LIMIT_PER_MINUTE = 3
    within_one_minute(monkeypatch)
    session = http(read_token)

    statuses = [session.get(f"{BASE}/studies").status_code for _ in range(4)]
    other = http(token_for(clinic, "dicomweb:read")).get(f"{BASE}/studies")

    assert statuses == [204, 204, 204, 429]
    assert other.status_code == 204


def test_stow_accepts_a_chunked_request_from_dicomweb_client(clinic):
    """dicomweb-client streams requests over 1 MB chunked, without a Content-Length."""
    token = token_for(clinic, "dicomweb:write", "dicomweb:read")
    client = dicomweb(token)
    files = synthetic_ct(slices=6, size=256)  # about 0.8 MB in all, 6 parts
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    client._chunk_size = 100_000  # force the streamed, chunked upload

    client.store_instances(datasets)

    sent = client._session.get_adapter("http://testserver").sent[-1]
    assert sent.headers.get("Transfer-Encoding") == "chunked"
    assert Instance.objects.for_tenant(clinic).count() == 6


def _chunked_stow(client, body: bytes, boundary: str, *, terminated: bool):
    return client.generic(
        "POST",
        "/dicomweb/studies",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        CONTENT_LENGTH="",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": terminated},
    )


def test_chunked_stow_is_bounded_and_needs_a_server_that_ends_the_input(clinic, settings):
    from django.test import Client

    token = token_for(clinic, "dicomweb:write")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    part = synthetic_ct(slices=1, size=64)[0]
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )

    unterminated = _chunked_stow(client, body, boundary, terminated=False)
    settings.STOW_MAX_REQUEST_BYTES = len(body) // 2
    too_large = _chunked_stow(client, body, boundary, terminated=True)

    assert unterminated.status_code == 411
    assert too_large.status_code == 413
    assert Instance.objects.for_tenant(clinic).count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["thumbnail", "frames/1/thumbnail"])
def test_an_instance_or_frame_thumbnail_is_its_rendering_made_small(
    suffix, clinic, read_token, outsider_token
):
    from PIL import Image

    (data,) = synthetic_ct(slices=1, size=256)
    ingest(clinic, data)
    url = f"{instance_url(_ds(data))}/{suffix}"

    ours = http(read_token).get(url, headers={"Accept": "image/jpeg"})
    sized = http(read_token).get(f"{url}?viewport=64,64", headers={"Accept": "image/png"})
    theirs = http(outsider_token).get(url)

    assert ours.status_code == 200 and ours.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(ours.content)).size == (128, 128)
    assert Image.open(io.BytesIO(sized.content)).size == (64, 64)
    assert theirs.status_code == 404
    read = AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_RETRIEVE)
    instance = str(Instance.objects.for_tenant(clinic).get().pk)
    assert [e.detail for e in read.order_by("seq")] == [{"thumbnail": 1, "instance": instance}] * 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "PatientName=ärzte^ölaf",
        "PatientName=ÄRZTE^ÖLAF",
        "PatientName=ärzte*",
        "PatientName=ÄRZTE%5E%C3%B6l?f",
        "PatientName=rzte%5E%C3%B6&fuzzymatching=true",
        "PatientName=%C3%A4rzte^%C3%B6laf",
    ],
)
def test_person_names_match_ignoring_case_in_any_script(query, clinic, read_token):
    ingest(clinic, synthetic_ct(slices=1, patient_name="Ärzte^Ölaf", patient_id="P-U")[0])
    ingest(clinic, synthetic_ct(slices=1, patient_name="Arzte^Olaf", patient_id="P-A")[0])

    response = http(read_token).get(f"{BASE}/studies?{query}")

    assert response.status_code == 200
    names = [s["00100010"]["Value"][0]["Alphabetic"] for s in response.json()]
    assert names == ["Ärzte^Ölaf"]
