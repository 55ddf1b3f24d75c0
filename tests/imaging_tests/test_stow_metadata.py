"""STOW-RS of DICOM JSON metadata with its bulk data (PS3.18 10.5.1.2)."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
from pydicom.encaps import generate_frames

from audit.models import Action, AuditEvent
from imaging.models import Instance
from tests.imaging_tests.dicomweb_support import BASE, http, instance_url
from tests.imaging_tests.helpers import sample_bytes, synthetic_ct

BOUNDARY = "m3ta"
JSON_STOW = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
PARTNER = "https://partner.example/bulk/"
FAILED, REFERENCED, OTHERS = "00081198", "00081199", "0008119A"
CANNOT_UNDERSTAND, PROCESSING, CONFLICT = 0xC000, 0x0110, 0x0111


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _split(ds: pydicom.Dataset, *, prefix: str = PARTNER) -> tuple[dict, dict[str, bytes]]:
    """`ds` as DICOM JSON with every binary value over 64 bytes named by a BulkDataURI."""
    bulk: dict[str, bytes] = {}

    def name(element: pydicom.DataElement) -> str:
        uri = f"{prefix}{ds.SOPInstanceUID}/{len(bulk)}"
        bulk[uri] = element.value
        return uri

    metadata = ds.to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=name)
    return metadata, bulk


def _body(parts: list[tuple[str, bytes, str]]) -> bytes:
    """A multipart/related body of (content type, payload, Content-Location) parts."""
    body = b""
    for content_type, payload, location in parts:
        head = f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n"
        if location:
            head += f"Content-Location: {location}\r\n"
        body += (head + "\r\n").encode() + payload + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _metadata_part(*datasets: dict) -> tuple[str, bytes, str]:
    return ("application/dicom+json", json.dumps(list(datasets)).encode(), "")


def _octets(bulk: dict[str, bytes]) -> list[tuple[str, bytes, str]]:
    return [("application/octet-stream", value, uri) for uri, value in bulk.items()]


def _post(token: str, parts: list[tuple[str, bytes, str]], *, path: str = "/studies"):
    return http(token).post(f"{BASE}{path}", data=_body(parts), headers={"Content-Type": JSON_STOW})


def _retrieved(token: str, ds: pydicom.Dataset) -> pydicom.Dataset:
    got = http(token).get(
        instance_url(ds),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert got.status_code == 200
    boundary = got.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    part = got.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1][:-2]
    return _ds(part)


def _reasons(answer: dict, sequence: str) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.get(sequence, {}).get("Value", [])]


def _failed_uids(answer: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.get(FAILED, {}).get("Value", [])]


@pytest.mark.django_db
def test_metadata_with_uncompressed_pixel_data_is_stored_and_read_back(clinic, write_token):
    (data,) = synthetic_ct(
        slices=1, patient_name="Müller^Jürgen", tags={"SpecificCharacterSet": "ISO_IR 192"}
    )
    ds = _ds(data)
    metadata, bulk = _split(ds)

    response = _post(write_token, [_metadata_part(metadata), *_octets(bulk)])
    stored = _retrieved(write_token, ds)

    assert response.status_code == 200, response.content
    (item,) = response.json()[REFERENCED]["Value"]
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert item["00081190"]["Value"][0].endswith(f"/instances/{ds.SOPInstanceUID}")
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert stored.PixelData == ds.PixelData
    assert str(stored.PatientName) == "Müller^Jürgen"
    event = AuditEvent.objects.for_tenant(clinic).get(action=Action.DICOMWEB_STORE)
    assert event.detail["stored"] == 1


@pytest.mark.django_db
def test_compressed_single_frame_goes_as_its_media_type(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    metadata, _ = _split(ds)
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]

    response = _post(
        write_token,
        [
            _metadata_part(metadata),
            ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", frame, pixel_uri),
        ],
    )
    stored = _retrieved(write_token, ds)

    assert response.status_code == 200, response.content
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert list(generate_frames(stored.PixelData, number_of_frames=1)) == [frame]


@pytest.mark.django_db
def test_compressed_frames_go_one_per_part_in_any_order(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    metadata, _ = _split(ds)
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]

    response = _post(
        write_token,
        [
            _metadata_part(metadata),
            ("image/dicom-rle", frames[1], f"{pixel_uri}/frames/2"),
            ("image/dicom-rle", frames[0], f"{pixel_uri}/frames/1"),
        ],
    )
    stored = _retrieved(write_token, ds)

    assert response.status_code == 200, response.content
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert list(generate_frames(stored.PixelData, number_of_frames=2)) == frames
    assert (stored.pixel_array == ds.pixel_array).all()


@pytest.mark.django_db
def test_bulk_data_other_than_pixels_and_inline_binary_are_kept(clinic, write_token):
    waveform = _ds(sample_bytes("waveform_ecg.dcm"))
    metadata, bulk = _split(waveform)
    (no_bulk,) = synthetic_ct(slices=1, size=4)  # 32 bytes of pixels: sent inline
    inline = _ds(no_bulk).to_json_dict(bulk_data_threshold=1024)

    response = _post(write_token, [_metadata_part(metadata, inline), *_octets(bulk)])

    assert response.status_code == 200, response.content
    assert len(response.json()[REFERENCED]["Value"]) == 2
    stored = _retrieved(write_token, waveform)
    sent = waveform.WaveformSequence[0].WaveformData
    assert stored.WaveformSequence[0].WaveformData == sent
    assert "InlineBinary" in inline["7FE00010"]
    assert _retrieved(write_token, _ds(no_bulk)).PixelData == _ds(no_bulk).PixelData


@pytest.mark.django_db
def test_a_bulk_data_uri_outside_the_request_fails_its_instance_and_is_never_fetched(
    clinic, write_token, monkeypatch
):
    (data,) = synthetic_ct(slices=1)
    ds = _ds(data)
    metadata, _ = _split(ds, prefix="http://169.254.169.254/latest/meta-data/")
    fetched = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: fetched.append(a))

    response = _post(write_token, [_metadata_part(metadata)])

    assert response.status_code == 409
    assert _failed_uids(response.json()) == [ds.SOPInstanceUID]
    assert _reasons(response.json(), FAILED) == [CANNOT_UNDERSTAND]
    assert fetched == []
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "breakage",
    ["no_sop_instance", "name_as_bulk_data", "not_json", "not_a_list", "bad_vr", "deep"],
)
def test_unusable_metadata_fails_by_name_where_it_can_and_stores_nothing(
    breakage, clinic, write_token
):
    (data,) = synthetic_ct(slices=1)
    ds = _ds(data)
    metadata, bulk = _split(ds)
    part = _metadata_part(metadata)
    if breakage == "no_sop_instance":
        del metadata["00080018"]
        part = _metadata_part(metadata)
    elif breakage == "name_as_bulk_data":
        metadata["00100010"] = {"vr": "PN", "BulkDataURI": f"{PARTNER}name"}
        part = _metadata_part(metadata)
        bulk[f"{PARTNER}name"] = b"Doe^John"
    elif breakage == "not_json":
        part = ("application/dicom+json", b"{not json", "")
    elif breakage == "not_a_list":
        part = ("application/dicom+json", b'"a string"', "")
    elif breakage == "bad_vr":
        metadata["00100010"] = {"vr": "ZZ", "Value": ["x"]}
        part = _metadata_part(metadata)
    elif breakage == "deep":
        item: dict = {}
        for _ in range(20):
            item = {"00081115": {"vr": "SQ", "Value": [item]}}
        metadata.update(item)
        part = _metadata_part(metadata)

    response = _post(write_token, [part, *_octets(bulk)])

    assert response.status_code == 409, response.content
    answer = response.json()
    assert REFERENCED not in answer
    if breakage in ("name_as_bulk_data", "bad_vr", "deep"):
        assert _failed_uids(answer) == [ds.SOPInstanceUID]
    assert set(_reasons(answer, FAILED) + _reasons(answer, OTHERS)) == {CANNOT_UNDERSTAND}
    assert response.headers["Warning"].startswith("299 testserver ")
    if breakage == "bad_vr":
        assert "not valid DICOM JSON" in response.headers["Warning"]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_bulk_data_before_its_metadata_or_named_by_nothing_fails_alone(clinic, write_token):
    first, second = (_ds(d) for d in synthetic_ct(slices=2))
    meta_first, bulk_first = _split(first)
    meta_second, bulk_second = _split(second)

    response = _post(
        write_token,
        [
            *_octets(bulk_first),  # before its metadata
            _metadata_part(meta_first, meta_second),
            *_octets(bulk_second),
            ("application/octet-stream", b"stray", f"{PARTNER}nobody"),
            ("application/octet-stream", b"again", next(iter(bulk_second))),
        ],
    )

    answer = response.json()
    assert response.status_code == 202
    assert [i["00081155"]["Value"][0] for i in answer[REFERENCED]["Value"]] == [
        second.SOPInstanceUID
    ]
    assert _failed_uids(answer) == [first.SOPInstanceUID]  # its pixels never came after
    assert _reasons(answer, OTHERS) == [CANNOT_UNDERSTAND]  # one item per reason


@pytest.mark.django_db
def test_compressed_pixels_in_another_transfer_syntax_than_declared_fail(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    metadata, _ = _split(ds)
    metadata["00020010"] = {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.70"]}

    response = _post(
        write_token,
        [
            _metadata_part(metadata),
            (
                "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
                frame,
                metadata["7FE00010"]["BulkDataURI"],
            ),
        ],
    )

    assert response.status_code == 409
    assert _failed_uids(response.json()) == [ds.SOPInstanceUID]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_several_frames_in_one_compressed_part_fail(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_rle_2frame.dcm"))
    metadata, _ = _split(ds)

    response = _post(
        write_token,
        [
            _metadata_part(metadata),
            ("image/dicom-rle", ds.PixelData, metadata["7FE00010"]["BulkDataURI"]),
        ],
    )

    assert response.status_code == 409
    assert _failed_uids(response.json()) == [ds.SOPInstanceUID]


@pytest.mark.django_db
def test_bulk_data_held_for_incomplete_instances_is_bounded(clinic, write_token, settings):
    first, second = (_ds(d) for d in synthetic_ct(slices=2, size=64))  # 8 KiB of pixels each
    meta_first, bulk_first = _split(first)
    meta_second, bulk_second = _split(second)
    meta_first["00431001"] = {"vr": "OB", "BulkDataURI": f"{PARTNER}late"}
    settings.STOW_JSON_MAX_HELD_BYTES = 12_000

    response = _post(
        write_token,
        [
            _metadata_part(meta_first, meta_second),
            *_octets(bulk_first),  # held: the first still waits for "late"
            *_octets(bulk_second),  # would hold 16 KiB
            ("application/octet-stream", b"\0" * 10, f"{PARTNER}late"),
        ],
    )

    answer = response.json()
    assert response.status_code == 409
    assert sorted(_failed_uids(answer)) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert set(_reasons(answer, FAILED)) == {PROCESSING}
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_a_body_cut_short_fails_the_instances_still_waiting(clinic, write_token):
    (data,) = synthetic_ct(slices=1)
    ds = _ds(data)
    metadata, bulk = _split(ds)
    body = _body([_metadata_part(metadata), *_octets(bulk)])

    response = http(write_token).post(
        f"{BASE}/studies",
        data=body[: len(body) // 2],
        headers={"Content-Type": JSON_STOW},
    )

    assert response.status_code == 409
    assert _failed_uids(response.json()) == [ds.SOPInstanceUID]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_same_instance_with_other_pixels_is_a_conflict_and_keeps_the_first(clinic, write_token):
    (data,) = synthetic_ct(slices=1)
    ds = _ds(data)
    metadata, bulk = _split(ds)
    _post(write_token, [_metadata_part(metadata), *_octets(bulk)])
    changed = {uri: bytes(reversed(value)) for uri, value in bulk.items()}

    again = _post(write_token, [_metadata_part(metadata), *_octets(bulk)])
    other = _post(write_token, [_metadata_part(metadata), *_octets(changed)])

    assert again.status_code == 200  # the same file, rebuilt alike: stored already
    assert other.status_code == 409
    assert _reasons(other.json(), FAILED) == [CONFLICT]
    assert _retrieved(write_token, ds).PixelData == ds.PixelData


@pytest.mark.django_db
def test_study_in_the_url_must_match(clinic, write_token):
    (data,) = synthetic_ct(slices=1)
    metadata, bulk = _split(_ds(data))

    response = _post(
        write_token, [_metadata_part(metadata), *_octets(bulk)], path="/studies/1.2.3.4"
    )

    assert response.status_code == 409
    assert _reasons(response.json(), FAILED) == [0xA900]


@pytest.mark.django_db
def test_outsider_cannot_read_what_was_stored(clinic, write_token, outsider_token):
    (data,) = synthetic_ct(slices=1)
    ds = _ds(data)
    metadata, bulk = _split(ds)
    _post(write_token, [_metadata_part(metadata), *_octets(bulk)])

    got = http(outsider_token).get(
        instance_url(ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
    )

    assert got.status_code == 404
    assert Instance.objects.for_tenant(clinic).count() == 1


@pytest.mark.django_db
def test_other_request_types_are_refused_naming_both(clinic, write_token):
    response = http(write_token).post(
        f"{BASE}/studies",
        data=b"x",
        headers={"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'},
    )

    assert response.status_code == 415
    assert "application/dicom+json" in response.text


@pytest.mark.django_db
def test_a_frame_past_number_of_frames_names_nothing(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    metadata, _ = _split(ds)
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]

    response = _post(
        write_token,
        [
            _metadata_part(metadata),
            ("image/dicom-rle", frames[0], f"{pixel_uri}/frames/3"),
            ("image/dicom-rle", frames[0], f"{pixel_uri}/frames/1"),
            ("image/dicom-rle", frames[1], f"{pixel_uri}/frames/2"),
        ],
    )

    assert response.status_code == 202
    assert len(response.json()[REFERENCED]["Value"]) == 1
    assert _reasons(response.json(), OTHERS) == [CANNOT_UNDERSTAND]


@pytest.mark.django_db
@pytest.mark.parametrize("vr", [["OB"], {"OB": 1}, 7, None])
def test_a_bulk_data_value_with_a_vr_that_is_not_text_fails_its_instance(clinic, write_token, vr):
    (data,) = synthetic_ct(slices=1)
    metadata, bulk = _split(_ds(data))
    metadata["7FE00010"]["vr"] = vr

    response = _post(write_token, [_metadata_part(metadata), *_octets(bulk)])

    assert response.status_code == 409
    assert _reasons(response.json(), FAILED) == [CANNOT_UNDERSTAND]


@pytest.mark.django_db
@pytest.mark.parametrize("number", ["²", "1" * 5000, "0", "-1", "1x"])
def test_a_frame_number_that_is_not_one_fails_cleanly(clinic, write_token, number):
    ds = _ds(sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    metadata, _ = _split(ds)
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    body = _body([_metadata_part(metadata)])[: -len(f"--{BOUNDARY}--\r\n")]
    body += f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Location: ".encode()
    body += f"{pixel_uri}/frames/{number}".encode("latin-1") + b"\r\n\r\n" + frame + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()

    response = http(write_token).post(
        f"{BASE}/studies", data=body, headers={"Content-Type": JSON_STOW}
    )

    assert response.status_code == 409
    assert _failed_uids(response.json()) == [ds.SOPInstanceUID]  # its frame never came
    assert _reasons(response.json(), OTHERS) == [CANNOT_UNDERSTAND]  # the stray part


@pytest.mark.django_db
def test_a_part_the_rebuilder_did_not_foresee_fails_alone_after_what_was_stored(
    clinic, write_token, settings, monkeypatch
):
    from imaging.dicomweb import stow_json

    settings.STOW_BATCH_INSTANCES = 1
    first, second = (_ds(d) for d in synthetic_ct(slices=2))
    meta_first, bulk_first = _split(first)
    meta_second, bulk_second = _split(second)
    real = stow_json._waiting
    monkeypatch.setattr(
        stow_json,
        "_waiting",
        lambda m: real(m) if m is meta_first or "Bad" not in json.dumps(m) else 1 / 0,
    )
    meta_second["00104000"] = {"vr": "LT", "Value": ["Bad"]}

    response = _post(
        write_token,
        [
            _metadata_part(meta_first),
            *_octets(bulk_first),
            _metadata_part(meta_second),
            *_octets(bulk_second),
        ],
    )

    assert response.status_code == 202
    assert [i["00081155"]["Value"][0] for i in response.json()[REFERENCED]["Value"]] == [
        first.SOPInstanceUID
    ]
    assert Instance.objects.for_tenant(clinic).count() == 1
    assert AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_STORE).exists()


def _naming_one_part(datasets: list[pydicom.Dataset]) -> tuple[str, list[dict]]:
    """Their metadata, each naming one and the same bulk data part for its pixel data."""
    shared = f"{PARTNER}shared"
    metadata = []
    for ds in datasets:
        meta, _ = _split(ds)
        meta["7FE00010"]["BulkDataURI"] = shared
        metadata.append(meta)
    return shared, metadata


@pytest.mark.django_db
def test_instances_sharing_one_bulk_data_part_are_stored_as_they_are_rebuilt(
    clinic, write_token, settings, monkeypatch
):
    from imaging.dicomweb import stow_json
    from imaging.dicomweb.views import stow

    settings.STOW_BATCH_INSTANCES = 1
    datasets = [_ds(d) for d in synthetic_ct(slices=4, size=64)]
    shared, metadata = _naming_one_part(datasets)
    rebuilt, rebuilt_when_stored = [], []
    real_rebuilt, real_store = stow_json._rebuilt, stow._store_batch
    monkeypatch.setattr(stow_json, "_rebuilt", lambda *a: rebuilt.append(1) or real_rebuilt(*a))
    monkeypatch.setattr(
        stow,
        "_store_batch",
        lambda request, **kw: rebuilt_when_stored.append(len(rebuilt)) or real_store(request, **kw),
    )

    response = _post(
        write_token,
        [_metadata_part(*metadata), ("application/octet-stream", datasets[0].PixelData, shared)],
    )

    assert response.status_code == 200
    assert Instance.objects.for_tenant(clinic).count() == 4
    assert rebuilt_when_stored == [1, 2, 3, 4]  # never all four files held together


@pytest.mark.django_db
def test_instances_rebuilt_past_the_request_limit_fail(clinic, write_token, settings):
    datasets = [_ds(d) for d in synthetic_ct(slices=3, size=64)]
    shared, metadata = _naming_one_part(datasets)
    body = _body(
        [_metadata_part(*metadata), ("application/octet-stream", datasets[0].PixelData, shared)]
    )
    settings.STOW_MAX_REQUEST_BYTES = len(body) + 1  # one rebuilt file passes it already

    response = _post(
        write_token,
        [_metadata_part(*metadata), ("application/octet-stream", datasets[0].PixelData, shared)],
    )

    assert response.status_code == 202
    assert len(response.json()[REFERENCED]["Value"]) == 2
    assert _reasons(response.json(), FAILED) == [PROCESSING]


@pytest.mark.django_db
def test_a_metadata_part_past_its_limit_is_refused_unparsed(clinic, write_token, settings):
    (data,) = synthetic_ct(slices=1)
    metadata, bulk = _split(_ds(data))
    settings.STOW_JSON_MAX_METADATA_BYTES = 100

    response = _post(write_token, [_metadata_part(metadata), *_octets(bulk)])

    assert response.status_code == 409
    assert _reasons(response.json(), OTHERS) == [PROCESSING, CANNOT_UNDERSTAND]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
def test_an_empty_metadata_part_is_a_failure_not_a_success(clinic, write_token):
    response = _post(write_token, [("application/dicom+json", b"[]", "")])

    assert response.status_code == 409
    assert _reasons(response.json(), OTHERS) == [CANNOT_UNDERSTAND]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("declared", "params"),
    [
        ("1.2.840.10008.1.2.4.50", ""),  # the metadata says JPEG
        ("", "; transfer-syntax=1.2.840.10008.1.2.4.50"),  # the part says JPEG
        ("1.2.840.10008.1.2.2", ""),  # big endian: its words are not these bytes
    ],
)
def test_pixel_data_as_octet_stream_in_another_syntax_fails(clinic, write_token, declared, params):
    (data,) = synthetic_ct(slices=1)
    metadata, bulk = _split(_ds(data))
    if declared:
        metadata["00020010"] = {"vr": "UI", "Value": [declared]}
    parts = [(f"application/octet-stream{params}", v, uri) for uri, v in bulk.items()]

    response = _post(write_token, [_metadata_part(metadata), *parts])

    assert response.status_code == 409
    assert _reasons(response.json(), FAILED) == [CANNOT_UNDERSTAND]
    assert not Instance.objects.for_tenant(clinic).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("change", [b"\0\0", -2])
def test_uncompressed_pixel_data_of_the_wrong_length_fails(clinic, write_token, change):
    (data,) = synthetic_ct(slices=1, size=64)
    ds = _ds(data)
    metadata, _ = _split(ds)
    pixels = ds.PixelData + change if isinstance(change, bytes) else ds.PixelData[:change]
    uri = metadata["7FE00010"]["BulkDataURI"]

    response = _post(
        write_token, [_metadata_part(metadata), ("application/octet-stream", pixels, uri)]
    )

    assert response.status_code == 409
    assert _reasons(response.json(), FAILED) == [CANNOT_UNDERSTAND]


@pytest.mark.django_db
def test_a_location_that_is_both_a_value_and_a_frame_counts_once(clinic, write_token):
    ds = _ds(sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    metadata, _ = _split(ds)
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    metadata["00431001"] = {"vr": "OB", "BulkDataURI": f"{pixel_uri}/frames/1"}

    response = _post(
        write_token,
        [_metadata_part(metadata), ("image/jpeg", frame, f"{pixel_uri}/frames/1")],
    )

    assert response.status_code in (200, 409)
    answer = response.json()
    items = answer.get(REFERENCED, {}).get("Value", []) + answer.get(FAILED, {}).get("Value", [])
    assert len(items) == 1  # answered once, not once per way the location matched


def test_a_missing_value_is_counted_once():
    from imaging.dicomweb.stow_json import _Waiting

    waiting = _Waiting(
        metadata={},
        sop_class="1.2",
        sop_instance="1.2.3",
        uris=frozenset({"a", "b"}),
        pixel_uri="p",
        frames=1,
        got={"a", "p"},
    )

    assert waiting.missing() == 1
