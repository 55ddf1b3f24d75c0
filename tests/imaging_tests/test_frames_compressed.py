"""Frames stored compressed, sent as stored to a client that asks for their compressed
media type (PS3.18 8.7.3.3.2); decoded to octet-stream otherwise."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from audit.models import Action, AuditEvent
from tests.imaging_tests.dicomweb_support import dicomweb, http, instance_url, token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _ids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _stored_frames(ds: pydicom.Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))


def _stored(clinic, name: str) -> pydicom.Dataset:
    data = sample_bytes(name)
    ingest(clinic, data)
    return _ds(data)


def _parts(response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
    parts = response.content.split(b"--" + boundary)[1:-1]
    result = []
    for part in parts:
        head, body = part.split(b"\r\n\r\n", 1)
        content_type = head.decode().split("Content-Type: ")[1].strip()
        result.append((content_type, body.removesuffix(b"\r\n")))
    return result


def _retrieves(clinic) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.for_tenant(clinic)
        .filter(action=Action.DICOMWEB_RETRIEVE)
        .order_by("seq")
    )


@pytest.mark.django_db
def test_colour_jpeg_frames_are_sent_as_stored_to_a_client_asking_for_image_jpeg(
    clinic, read_token
):
    # Ultrasound-like: 30 frames, JPEG baseline, YBR_FULL_422 in the metadata.
    ds = _stored(clinic, "examples_ybr_color.dcm")

    frames = dicomweb(read_token).retrieve_instance_frames(
        *_ids(ds), frame_numbers=[3, 1], media_types=(("image/jpeg", JPEG_BASELINE),)
    )

    stored = _stored_frames(ds)
    assert frames == [stored[2], stored[0]]
    decoded = np.asarray(Image.open(io.BytesIO(frames[0])).convert("RGB"), dtype=np.int16)
    # The bitstream decodes (with JPEG's own colour transform) to the frame pydicom
    # decodes; the octet-stream form is the same frame as RGB.
    assert np.abs(decoded - ds.pixel_array[2].astype(np.int16)).mean() < 2


@pytest.mark.django_db
def test_each_part_names_its_media_type_and_transfer_syntax(clinic, read_token):
    ds = _stored(clinic, "examples_ybr_color.dcm")

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/1,2",
        headers={
            "Accept": f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}'
        },
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = _parts(response)
    assert [kind for kind, _ in parts] == [f"image/jpeg; transfer-syntax={JPEG_BASELINE}"] * 2
    assert [body for _, body in parts] == _stored_frames(ds)[:2]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "media_type", "syntax"),
    [
        ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg", JPEG_LOSSLESS_SV1),
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls", JPEG_LS_LOSSLESS),
        ("MR_small_jp2klossless.dcm", "image/jp2", JPEG_2000_LOSSLESS),
        ("MR_small_RLE.dcm", "image/dicom-rle", RLE),
        ("MR_small_RLE.dcm", "image/x-dicom-rle", RLE),
    ],
)
def test_a_media_type_without_a_transfer_syntax_means_its_default(
    name, media_type, syntax, clinic, read_token
):
    ds = _stored(clinic, name)

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/1",
        headers={"Accept": f'multipart/related; type="{media_type}"'},
    )

    assert response.status_code == 200
    ((kind, body),) = _parts(response)
    assert kind.endswith(f"transfer-syntax={syntax}")
    assert body == _stored_frames(ds)[0]


@pytest.mark.django_db
def test_a_media_type_whose_default_is_another_syntax_is_406_naming_what_to_ask_for(
    clinic, read_token
):
    # image/jpeg alone means JPEG Lossless (SV1); these frames are lossy baseline.
    ds = _stored(clinic, "examples_ybr_color.dcm")
    url = f"{instance_url(ds)}/frames/1"

    refused = http(read_token).get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    any_jpeg = http(read_token).get(
        url, headers={"Accept": 'multipart/related; type="image/jpeg"; transfer-syntax=*'}
    )

    assert refused.status_code == 406
    assert JPEG_BASELINE in refused.json()["error"]
    assert "transfer-syntax=*" in refused.json()["error"]
    assert any_jpeg.status_code == 200
    assert _parts(any_jpeg)[0] == (
        f"image/jpeg; transfer-syntax={JPEG_BASELINE}",
        _stored_frames(ds)[0],
    )


@pytest.mark.django_db
def test_one_frame_goes_as_a_single_part_when_that_is_preferred(clinic, read_token):
    ds = _stored(clinic, "MR_small_jp2klossless.dcm")
    url = f"{instance_url(ds)}/frames"

    single = http(read_token).get(f"{url}/1", headers={"Accept": "image/jp2"})
    several = http(read_token).get(f"{url}/1,1", headers={"Accept": "image/jp2"})

    assert single.status_code == 200
    assert single.headers["Content-Type"] == f"image/jp2; transfer-syntax={JPEG_2000_LOSSLESS}"
    assert single.content == _stored_frames(ds)[0]
    assert several.status_code == 400  # a frame named twice, before any negotiation


@pytest.mark.django_db
def test_several_frames_need_a_multipart_offer(clinic, read_token):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    ds = _ds(data)

    url = f"{instance_url(ds)}/frames"

    several = http(read_token).get(f"{url}/1,2", headers={"Accept": "image/dicom-rle"})
    one = http(read_token).get(f"{url}/2", headers={"Accept": "image/dicom-rle"})

    assert several.status_code == 406
    assert one.status_code == 200 and one.content == _stored_frames(ds)[1]


@pytest.mark.django_db
def test_the_preferred_acceptable_form_wins(clinic, read_token):
    ds = _stored(clinic, "MR_small_jpeg_ls_lossless.dcm")
    url = f"{instance_url(ds)}/frames/1"
    jls = 'multipart/related; type="image/jls"'
    octets = 'multipart/related; type="application/octet-stream"'

    compressed_first = http(read_token).get(url, headers={"Accept": f"{jls}, {octets}"})
    decoded_preferred = http(read_token).get(url, headers={"Accept": f"{jls}; q=0.5, {octets}"})

    assert _parts(compressed_first)[0][0] == f"image/jls; transfer-syntax={JPEG_LS_LOSSLESS}"
    kind, body = _parts(decoded_preferred)[0]
    assert kind == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert body == ds.pixel_array.astype("<u2").tobytes()


@pytest.mark.django_db
def test_uncompressed_frames_fall_back_to_octet_stream_or_are_406(clinic, read_token):
    (data,) = synthetic_ct(slices=1)
    ingest(clinic, data)
    url = f"{instance_url(_ds(data))}/frames/1"
    jpeg = 'multipart/related; type="image/jpeg"; transfer-syntax=*'

    with_fallback = http(read_token).get(
        url, headers={"Accept": f'{jpeg}, multipart/related; type="application/octet-stream"'}
    )
    compressed_only = http(read_token).get(url, headers={"Accept": jpeg})

    assert with_fallback.status_code == 200
    assert _parts(with_fallback)[0][0].startswith("application/octet-stream")
    assert compressed_only.status_code == 406
    assert "application/octet-stream" in compressed_only.json()["error"]
    assert "stored as" not in compressed_only.json()["error"]  # not compressed: nothing to name


@pytest.mark.django_db
def test_frames_without_a_decoder_here_are_still_sent_as_stored(clinic, read_token):
    # 12-bit JPEG Extended: no decoder in this build, so octet-stream is a 406, but the
    # bitstream goes to a client that decodes it itself.
    ds = _stored(clinic, "JPEG-lossy.dcm")
    url = f"{instance_url(ds)}/frames/1"

    decoded = http(read_token).get(url)
    as_stored = http(read_token).get(
        url,
        headers={
            "Accept": f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_EXTENDED}'
        },
    )

    assert decoded.status_code == 406
    assert as_stored.status_code == 200
    assert _parts(as_stored)[0][1] == _stored_frames(ds)[0]


@pytest.mark.django_db
def test_a_compressed_read_is_audited_like_a_decoded_one(clinic, read_token):
    ds = _stored(clinic, "MR_small_RLE.dcm")

    dicomweb(read_token).retrieve_instance_frames(
        *_ids(ds), frame_numbers=[1], media_types=(("image/dicom-rle", RLE),)
    )

    (event,) = _retrieves(clinic)
    assert (event.outcome, event.detail["frames"]) == ("success", 1)


@pytest.mark.django_db
def test_a_frame_past_the_last_is_404_and_nothing_is_read(clinic, read_token):
    ds = _stored(clinic, "MR_small_RLE.dcm")

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/2",
        headers={"Accept": 'multipart/related; type="image/dicom-rle"'},
    )

    assert response.status_code == 404
    assert _retrieves(clinic) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "accept", ["image/png", 'multipart/related; type="image/gif"', "text/html"]
)
def test_a_form_never_offered_is_406_before_the_instance_is_looked_up(accept, clinic, read_token):
    missing = "http://testserver/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1"

    response = http(read_token).get(missing, headers={"Accept": accept})

    assert response.status_code == 406
    assert "image/jpeg" in response.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "accept",
    [
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
        # Not the stored syntax: the 406 naming it is only for those who may read it.
        'multipart/related; type="image/jls"',
    ],
)
def test_outsider_gets_the_same_404_as_for_a_missing_instance(accept, clinic, other_clinic):
    ds = _stored(clinic, "examples_ybr_color.dcm")
    outsider = http(token_for(other_clinic, "dicomweb:read"))

    theirs = outsider.get(f"{instance_url(ds)}/frames/1", headers={"Accept": accept})
    missing = outsider.get(f"{instance_url(ds)}9/frames/1", headers={"Accept": accept})

    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    assert (
        not AuditEvent.objects.for_tenant(other_clinic)
        .filter(action=Action.DICOMWEB_RETRIEVE)
        .exists()
    )


def test_a_frame_that_cannot_be_found_in_the_fragments_is_a_render_error():
    from imaging.dicomweb.bulkdata import stored_frames
    from imaging.render import RenderError

    ds = _ds(sample_bytes("MR_small_RLE.dcm"))  # one fragment, no offset table
    ds.NumberOfFrames = 2
    buffer = io.BytesIO()
    ds.save_as(buffer)

    with pytest.raises(RenderError, match="is not recorded"):
        stored_frames(buffer.getvalue(), numbers=[2], transfer_syntax=RLE)
    with pytest.raises(RenderError, match="transfer syntax its row records"):
        stored_frames(buffer.getvalue(), numbers=[1], transfer_syntax=JPEG_BASELINE)


def _reencapsulated(name: str, *, fragments_per_frame: int, offsets: bytes | None = None) -> bytes:
    """`name` with its frames split into several fragments each, with a Basic Offset
    Table (or `offsets` in its place)."""
    from pydicom.encaps import encapsulate

    ds = _ds(sample_bytes(name))
    ds.PixelData = encapsulate(
        _stored_frames(ds), fragments_per_frame=fragments_per_frame, has_bot=True
    )
    if offsets is not None:  # the table's item: tag, length, offsets
        header = ds.PixelData[:8]
        table_length = int.from_bytes(header[4:8], "little")
        ds.PixelData = header + offsets + ds.PixelData[8 + table_length :]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.django_db
def test_frames_of_several_fragments_are_joined_by_the_offset_table(clinic, read_token):
    data = _reencapsulated("SC_rgb_rle_2frame.dcm", fragments_per_frame=3)
    ingest(clinic, data)
    ds = _ds(data)

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/2", headers={"Accept": "image/dicom-rle"}
    )

    assert response.status_code == 200
    assert response.content == _stored_frames(ds)[1]
    assert response.content == _stored_frames(_ds(sample_bytes("SC_rgb_rle_2frame.dcm")))[1]


@pytest.mark.django_db
def test_pixel_data_of_more_fragments_than_served_as_stored_is_a_clear_406(
    clinic, read_token, monkeypatch
):
    from imaging.dicomweb import bulkdata

    data = _reencapsulated("SC_rgb_rle_2frame.dcm", fragments_per_frame=3)  # six fragments
    ingest(clinic, data)
    ds = _ds(data)
    monkeypatch.setattr(bulkdata, "MAX_FRAGMENTS", 5)  # as a crafted object of millions

    as_stored = http(read_token).get(
        f"{instance_url(ds)}/frames/2", headers={"Accept": "image/dicom-rle"}
    )
    decoded = http(read_token).get(
        f"{instance_url(ds)}/frames/2",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )

    assert as_stored.status_code == 406
    assert "more than 5 fragments" in as_stored.json()["error"]
    assert decoded.status_code == 200


@pytest.mark.django_db
def test_an_unsound_offset_table_is_a_clear_406_audited_as_not_served(clinic, read_token):
    # Offsets out of order, and no other way to tell three fragments a frame apart.
    bad = (0).to_bytes(4, "little") + (0).to_bytes(4, "little")
    data = _reencapsulated("SC_rgb_rle_2frame.dcm", fragments_per_frame=3, offsets=bad)
    ingest(clinic, data)
    ds = _ds(data)

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/1", headers={"Accept": "image/dicom-rle"}
    )

    assert response.status_code == 406
    assert "application/octet-stream" in response.json()["error"]
    read, unserved = _retrieves(clinic)
    instance = str(read.detail["instance"])
    assert (read.outcome, read.detail) == (
        "success",
        {"frames": 1, "as_stored": True, "instance": instance},
    )
    assert unserved.target_id == instance  # the read named the instance it failed on
    assert (unserved.outcome, unserved.detail["reason"]) == ("failure", "not_decodable")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "offsets",
    [
        (b"\xff" * 8, b"\xff" * 8),  # past any buffer, and too long to add up
        (b"", b""),  # empty
        (b"\x00" * 7, b"\x00" * 7),  # not 64-bit values
        ((1).to_bytes(8, "little"), (2).to_bytes(8, "little")),  # not the first at 0
    ],
)
def test_a_hostile_extended_offset_table_is_ignored(offsets, clinic, read_token):
    ds = _ds(sample_bytes("MR_small_RLE.dcm"))
    ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets
    buffer = io.BytesIO()
    ds.save_as(buffer)
    ingest(clinic, buffer.getvalue())

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/1", headers={"Accept": "image/dicom-rle"}
    )

    assert response.status_code == 200
    assert response.content == _stored_frames(ds)[0]


@pytest.mark.django_db
def test_a_sound_extended_offset_table_is_followed(clinic, read_token):
    from pydicom.encaps import encapsulate_extended

    ds = _ds(sample_bytes("SC_rgb_rle_2frame.dcm"))
    frames = _stored_frames(ds)
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        frames
    )
    buffer = io.BytesIO()
    ds.save_as(buffer)
    ingest(clinic, buffer.getvalue())

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/2", headers={"Accept": "image/dicom-rle"}
    )

    assert response.status_code == 200 and response.content == frames[1]


@pytest.mark.django_db
def test_an_alias_is_answered_under_the_name_asked_for(clinic, read_token):
    ds = _stored(clinic, "MR_small_jpeg_ls_lossless.dcm")

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/1", headers={"Accept": 'multipart/related; type="image/x-jls"'}
    )

    assert _parts(response)[0][0] == f"image/x-jls; transfer-syntax={JPEG_LS_LOSSLESS}"


@pytest.mark.django_db
@pytest.mark.parametrize("quality", ["0", "nan", "2"])
def test_a_compressed_type_with_no_or_a_malformed_quality_is_not_chosen(
    quality, clinic, read_token
):
    ds = _stored(clinic, "MR_small_jpeg_ls_lossless.dcm")
    accept = (
        f'multipart/related; type="image/jls"; q={quality}, '
        'multipart/related; type="application/octet-stream"; q=0.1'
    )

    response = http(read_token).get(f"{instance_url(ds)}/frames/1", headers={"Accept": accept})

    assert _parts(response)[0][0].startswith("application/octet-stream")


@pytest.mark.django_db
def test_bulk_data_is_never_sent_compressed(clinic, read_token):
    ds = _stored(clinic, "MR_small_jpeg_ls_lossless.dcm")

    response = http(read_token).get(
        f"{instance_url(ds)}/bulkdata/7FE00010",
        headers={"Accept": 'multipart/related; type="image/jls"'},
    )

    assert response.status_code == 406


def _multiframe_without_offsets(name: str, *, frames: int, fragments_per_frame: int) -> bytes:
    """`name`'s one frame `frames` times over, each frame in several fragments, with an
    empty Basic Offset Table: only the codestreams' markers say where frames start."""
    from pydicom.encaps import encapsulate

    ds = _ds(sample_bytes(name))
    (frame,) = _stored_frames(ds)
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate(
        [frame] * frames, fragments_per_frame=fragments_per_frame, has_bot=False
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg"),
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls"),
        ("MR_small_jp2klossless.dcm", "image/jp2"),
    ],
)
def test_frames_of_several_fragments_without_an_offset_table_are_found_by_their_markers(
    name, media_type, clinic, read_token
):
    data = _multiframe_without_offsets(name, frames=3, fragments_per_frame=3)
    ingest(clinic, data)
    ds = _ds(data)
    (expected,) = _stored_frames(_ds(sample_bytes(name)))

    response = http(read_token).get(
        f"{instance_url(ds)}/frames/2,3",
        headers={"Accept": f'multipart/related; type="{media_type}"; transfer-syntax=*'},
    )

    assert response.status_code == 200, response.content[:300]
    assert [body for _, body in _parts(response)] == [expected, expected]


def test_markers_that_do_not_give_the_number_of_frames_are_not_trusted():
    from imaging.dicomweb.bulkdata import stored_frames
    from imaging.render import RenderError

    data = _multiframe_without_offsets("SC_rgb_jpeg_dcmtk.dcm", frames=3, fragments_per_frame=2)
    ds = _ds(data)
    ds.NumberOfFrames = 4  # three codestreams in the data
    buffer = io.BytesIO()
    ds.save_as(buffer)

    with pytest.raises(RenderError, match="is not recorded"):
        stored_frames(buffer.getvalue(), numbers=[1], transfer_syntax=JPEG_BASELINE)


def test_frames_asked_for_together_are_refused_past_the_decoded_limit(clinic, monkeypatch):
    from imaging.dicomweb.views import images

    ds = _stored(clinic, "SC_rgb_rle_2frame.dcm")  # 2 frames of 100 x 100 RGB, RLE
    frame_bytes = 100 * 100 * 3
    client = http(token_for(clinic, "dicomweb:read"))
    url = f"{instance_url(ds)}/frames/1,2"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}

    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 2 * frame_bytes)
    both = client.get(url, headers=accept)
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 2 * frame_bytes - 1)
    refused = client.get(url, headers=accept)

    assert both.status_code == 200
    assert int(both.headers["Content-Length"]) == len(both.content)
    assert [len(body) for _, body in _parts(both)] == [frame_bytes] * 2
    assert refused.status_code == 406 and "ask for fewer frames" in refused.json()["error"]
    event = _retrieves(clinic)[-1]
    assert event.outcome == "failure" and event.detail["reason"] == "too_large"
