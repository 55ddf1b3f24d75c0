"""The streaming multipart/related parser behind STOW-RS."""

from __future__ import annotations

import io

import pytest

from imaging.dicomweb.multipart import MultipartError, PartTooLarge, iter_related_parts

TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'


def _body(*payloads: bytes) -> bytes:
    body = b"preamble to ignore\r\n"
    for payload in payloads:
        body += b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
    return body + b"--XyZ--\r\n"


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 20])
def test_parts_survive_any_chunking(chunk_size):
    # The boundary text may appear in a body, just never right after a line break.
    payloads = [b"A" * 100, b"--XyZ in text\r\n--Xy" * 3, b"", bytes(range(256))]

    parts = list(
        iter_related_parts(
            io.BytesIO(_body(*payloads)).read, TYPE, max_part_bytes=10_000, chunk_size=chunk_size
        )
    )

    assert [part.payload for part in parts] == payloads
    assert {part.type for part in parts} == {"application/dicom"}


def test_oversized_part_is_flagged_and_the_rest_still_parsed():
    parts = list(
        iter_related_parts(
            io.BytesIO(_body(b"x" * 500, b"ok")).read, TYPE, max_part_bytes=100, chunk_size=64
        )
    )

    assert isinstance(parts[0].payload, PartTooLarge)
    assert parts[1].payload == b"ok"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"no boundary here", TYPE, "does not contain"),
        (b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nunfinished", TYPE, "ends inside a part"),
        (b"x", 'multipart/related; type="application/dicom"', "boundary is missing"),
        (b"x", 'multipart/related; boundary="bad\x01"', "boundary is missing or invalid"),
        (b"--XyZ--\r\n", TYPE, "no parts"),
    ],
)
def test_malformed_bodies_raise_a_clear_error(body, content_type, message):
    with pytest.raises(MultipartError, match=message):
        list(iter_related_parts(io.BytesIO(body).read, content_type, max_part_bytes=100))


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1 << 20])
def test_a_part_of_exactly_the_limit_passes_and_one_byte_more_is_flagged(chunk_size):
    body = _body(b"a" * 100, b"b" * 101, b"c" * 1000, b"d" * 99)

    parts = [
        part.payload
        for part in iter_related_parts(
            io.BytesIO(body).read, TYPE, max_part_bytes=100, chunk_size=chunk_size
        )
    ]

    assert parts[0] == b"a" * 100
    assert isinstance(parts[1], PartTooLarge)
    assert isinstance(parts[2], PartTooLarge)
    assert parts[3] == b"d" * 99


def test_a_part_gives_its_type_parameters_and_content_location():
    body = (
        b"--XyZ\r\ncontent-type: Image/JPEG; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
        b"Content-Location:  https://partner.example/bulk/1 \r\n\r\nFRAME\r\n"
        b"--XyZ\r\n\r\nbare\r\n--XyZ--\r\n"
    )

    first, second = iter_related_parts(io.BytesIO(body).read, TYPE, max_part_bytes=100)

    assert first.type == "image/jpeg"
    assert first.params == {"transfer-syntax": "1.2.840.10008.1.2.4.50"}
    assert first.location == "https://partner.example/bulk/1"
    assert first.payload == b"FRAME"
    assert (second.type, second.params, second.location) == ("application/octet-stream", {}, "")
