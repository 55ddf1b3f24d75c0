"""Frames read by the pixel layout ingest records, without parsing the file again.

Whatever the layout gives must be what parsing gives: the same frame bytes, the same
rendered image, byte for byte; the tests that use a layout forbid parsing once they
know what to expect. Where there is no layout (rows stored before it was kept, pixel
data only pydicom can decode, an older version's) or the layout does not fit the file,
the file is parsed as before.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from django.test import Client
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.dicom import parse_part10
from imaging.models import Instance
from imaging.render import (
    PIXEL_LAYOUT_VERSION,
    NoSuchFrame,
    RenderError,
    Viewport,
    frame_count,
    frame_native_bytes,
    frames_native_bytes,
    rendered,
    rendered_file,
)
from tests.helpers import response_bytes
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct

LIMITS = {"max_bytes": 1 << 30, "max_depth": 16, "max_elements": 500_000}

# pydicom's files whose frames are uncompressed one-sample 8- or 16-bit little endian.
WITH_LAYOUT = [
    "CT_small.dcm",  # 16-bit signed, rescaled, windowed
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",  # a value longer than its frame
    "examples_overlay.dcm",  # 12 of 16 bits, an overlay in the bits above
    "examples_palette.dcm",  # 8-bit
]
WITHOUT_LAYOUT = [
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_small_odd.dcm",  # three samples
    "image_dfl.dcm",  # deflated
    "rtdose.dcm",  # 32 bits, 15 frames
]

RENDERINGS = [
    {},
    {"window": (40.0, 400.0)},
    {"window": (100.0, 1.0)},  # a threshold
    {"viewport": Viewport(32, 20)},
    {"media_type": "image/png"},
    {"quality": 40},
]


@pytest.fixture
def no_parsing(monkeypatch):
    """Once called, reading a file with pydicom fails the test."""

    def forbid() -> None:
        def parsed(*args, **kwargs):
            raise AssertionError("the file was parsed")

        monkeypatch.setattr(pydicom, "dcmread", parsed)

    return forbid


def _layout(data: bytes) -> dict:
    return parse_part10(data, **LIMITS).pixel_layout


def _stored(data: bytes) -> bytes:
    """The bytes as the portal stores them (a non-zero preamble zeroed)."""
    return parse_part10(data, **LIMITS).data


@pytest.mark.parametrize("name", WITH_LAYOUT)
def test_frames_by_the_layout_are_the_parsed_frames(name, no_parsing):
    data = _stored(sample_bytes(name))
    layout = _layout(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    value = ds.PixelData
    assert data[layout["offset"] : layout["offset"] + len(value)] == value
    numbers = list(range(1, frame_count(ds) + 1))
    expected = [frame_native_bytes(ds, n) for n in numbers]
    no_parsing()
    assert frames_native_bytes(data, layout=layout, numbers=numbers) == expected


@pytest.mark.parametrize("options", RENDERINGS)
@pytest.mark.parametrize("name", WITH_LAYOUT)
def test_a_frame_rendered_by_the_layout_is_the_parsed_rendering(name, options, no_parsing):
    data = _stored(sample_bytes(name))
    ds = pydicom.dcmread(io.BytesIO(data))
    last = frame_count(ds)
    expected = rendered(ds, number=last, **options)
    layout = _layout(data)
    if layout["grey"] is not None:  # else (palette colour) the parse's rules apply
        no_parsing()
    assert rendered_file(data, layout=layout, number=last, **options) == expected


def test_palette_colour_keeps_the_parsing_paths_rendering():
    layout = _layout(_stored(sample_bytes("examples_palette.dcm")))
    assert layout["offset"] and layout["grey"] is None


@pytest.mark.parametrize("name", WITHOUT_LAYOUT)
def test_pixel_data_only_pydicom_decodes_records_no_layout(name):
    data = _stored(sample_bytes(name))
    layout = _layout(data)
    assert layout == {"v": PIXEL_LAYOUT_VERSION}
    ds = pydicom.dcmread(io.BytesIO(data))
    assert frames_native_bytes(data, layout=layout, numbers=[1]) == [frame_native_bytes(ds, 1)]
    assert rendered_file(data, layout=layout, number=1) == rendered(ds, number=1)


def _written(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _monochrome(
    frames: np.ndarray,
    *,
    bits_stored: int,
    signed: bool,
    photometric: str = "MONOCHROME2",
    bits_allocated: int = 16,
    **elements,
) -> bytes:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = frames.astype("<u2" if bits_allocated == 16 else "u1").tobytes()
    return _written(ds)


def _garbage_high_bits(shape: tuple[int, ...]) -> np.ndarray:
    words = np.random.default_rng(11).integers(0, 1 << 16, size=shape, dtype=np.uint32)
    return words.astype(np.uint16)


def test_frames_over_the_cap_are_refused_before_any_is_copied(monkeypatch):
    from imaging import render

    data = _monochrome(_garbage_high_bits((4, 6, 5)) % 4096, bits_stored=12, signed=False)
    layout = _layout(data)
    frame_bytes = 6 * 5 * 2
    copied = []
    real = render._layout_frame
    monkeypatch.setattr(render, "_layout_frame", lambda *args: copied.append(args) or real(*args))

    with pytest.raises(render.FramesTooLarge):
        frames_native_bytes(data, layout=layout, numbers=[1, 2, 3], max_bytes=2 * frame_bytes)
    assert not copied
    assert (
        len(frames_native_bytes(data, layout=layout, numbers=[1, 2], max_bytes=2 * frame_bytes))
        == 2
    )


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [(16, 12), (8, 6)])  # allocated, stored
def test_each_frame_of_a_multi_frame_instance_by_the_layout(signed, bits, no_parsing):
    allocated, stored = bits
    data = _monochrome(
        _garbage_high_bits((4, 6, 5)).astype(np.uint32) % (1 << allocated),
        bits_stored=stored,
        bits_allocated=allocated,
        signed=signed,
        WindowCenter=100,
        WindowWidth=900,
        RescaleSlope=2,
        RescaleIntercept=-1024,
    )
    layout = _layout(data)
    assert layout["frames"] == 4
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = [frame_native_bytes(ds, number) for number in (1, 2, 3, 4)]
    images = [rendered(ds, number=number) for number in (1, 2, 3, 4)]
    no_parsing()
    for number in (1, 2, 3, 4):
        assert frames_native_bytes(data, layout=layout, numbers=[number]) == [frames[number - 1]]
        assert rendered_file(data, layout=layout, number=number) == images[number - 1]
    with pytest.raises(NoSuchFrame):
        rendered_file(data, layout=layout, number=5)
    with pytest.raises(NoSuchFrame):
        frames_native_bytes(data, layout=layout, numbers=[5])


@pytest.mark.parametrize(
    "elements",
    [
        {"photometric": "MONOCHROME1", "WindowCenter": 2000, "WindowWidth": 3000},
        {"WindowCenter": [2000, 100], "WindowWidth": [3000, 50]},  # the first is used
        {},  # MR without a window: stretched by percentiles, from the parse
        {"VOILUTFunction": "SIGMOID", "WindowCenter": 2000, "WindowWidth": 3000},
    ],
)
def test_windows_the_layout_records_render_as_parsing_does(elements):
    frames = np.random.default_rng(3).integers(0, 4096, size=(1, 16, 16)).astype(np.uint16)
    data = _monochrome(frames, bits_stored=12, signed=False, **elements)
    ds = pydicom.dcmread(io.BytesIO(data))
    for options in ({}, {"window": (1000.0, 500.0)}):
        assert rendered_file(data, layout=_layout(data), **options) == rendered(ds, **options)


def test_elements_after_the_pixel_data_do_not_move_the_layout():
    ds = pydicom.dcmread(io.BytesIO(_stored(sample_bytes("CT_small.dcm"))))
    ds.DataSetTrailingPadding = b"\x00" * 64  # (FFFC,FFFC), after the pixel data
    data = _written(ds)
    layout = _layout(data)
    assert layout["offset"] + len(ds.PixelData) < len(data)
    assert frames_native_bytes(data, layout=layout, numbers=[1]) == [frame_native_bytes(ds, 1)]


@pytest.mark.parametrize(
    "broken",
    [
        {"offset": 10**9},  # past the end
        {"offset": -4},
        {"shift": 2},  # within the file, but not where the value starts
        {"shift": -12},
        {"length": 10},
        {"v": PIXEL_LAYOUT_VERSION - 1},  # recorded by older rules
        {"v": None},
        {"frames": float("inf")},
        {"dtype": ">f8"},
        {"frames": 10**6},
        {"stored": 40},
        {"rows": "many"},
        {"grey": {"slope": 1.0}},
    ],
)
def test_a_layout_that_does_not_fit_the_file_is_not_used(broken):
    data = _stored(sample_bytes("CT_small.dcm"))
    ds = pydicom.dcmread(io.BytesIO(data))
    layout = {**_layout(data), **broken}
    layout["offset"] += layout.pop("shift", 0)
    assert frames_native_bytes(data, layout=layout, numbers=[1]) == [frame_native_bytes(ds, 1)]
    assert rendered_file(data, layout=layout, number=1) == rendered(ds, number=1)


def test_a_frame_too_wide_for_jpeg_is_a_render_error_either_way():
    frames = np.arange(65_535, dtype=np.uint16).reshape(1, 1, 65_535)
    data = _monochrome(frames, bits_stored=16, signed=False, WindowCenter=100, WindowWidth=50)
    layout = _layout(data)
    assert layout["grey"] is not None
    with pytest.raises(RenderError):
        rendered_file(data, layout=layout)
    with pytest.raises(RenderError):
        rendered(pydicom.dcmread(io.BytesIO(data)))
    png = rendered_file(data, layout=layout, media_type="image/png")
    assert png == rendered(pydicom.dcmread(io.BytesIO(data)), media_type="image/png")


# --- Through DICOMweb, as a partner and the viewer read them ------------------------


@pytest.fixture
def reader(clinic):
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")


def _url(data: bytes, suffix: str) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{suffix}"
    )


def _frame_body(response) -> bytes:
    """The one part of a multipart frames answer."""
    boundary = response["Content-Type"].split("boundary=")[1].strip('"').encode()
    part = response_bytes(response).split(b"--" + boundary)[1]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


@pytest.fixture
def slice_(clinic, data_dir) -> SimpleNamespace:
    (data,) = synthetic_ct(slices=1, size=32)
    ingest(clinic, data)
    row = Instance.objects.for_tenant(clinic).get()
    ds = pydicom.dcmread(io.BytesIO(data))
    return SimpleNamespace(
        data=data, row=row, frame=frame_native_bytes(ds, 1), image=rendered(ds, number=1)
    )


@pytest.mark.django_db
def test_ingest_records_the_layout_and_dicomweb_serves_by_it(clinic, slice_, reader, no_parsing):
    layout = slice_.row.pixel_layout
    assert layout["offset"] > 0 and layout["frames"] == 1
    assert layout["grey"]["window"] is not None  # the CT's own window
    rendered_url, frame_url = (_url(slice_.data, s) for s in ("frames/1/rendered", "frames/1"))
    no_parsing()
    rendered_ = reader.get(rendered_url, HTTP_ACCEPT="image/jpeg")
    assert rendered_.status_code == 200
    assert rendered_.content == slice_.image
    frame = reader.get(frame_url)
    assert frame.status_code == 200
    assert _frame_body(frame) == slice_.frame


@pytest.mark.django_db
@pytest.mark.parametrize(
    "layout",
    [
        None,
        {"v": PIXEL_LAYOUT_VERSION},
        {"v": PIXEL_LAYOUT_VERSION, "offset": 10**9, "rows": 1},
        "an older version",
    ],
)
def test_rows_without_a_usable_layout_are_parsed(layout, clinic, slice_, reader):
    if layout == "an older version":
        layout = {**slice_.row.pixel_layout, "v": PIXEL_LAYOUT_VERSION - 1}
    Instance.objects.for_tenant(clinic).update(pixel_layout=layout)
    rendered_ = reader.get(_url(slice_.data, "frames/1/rendered"), HTTP_ACCEPT="image/jpeg")
    assert rendered_.status_code == 200
    assert rendered_.content == slice_.image
    frame = reader.get(_url(slice_.data, "frames/1"))
    assert frame.status_code == 200
    assert _frame_body(frame) == slice_.frame


@pytest.mark.django_db
def test_another_clinics_reader_gets_no_frame_by_the_layout(other_clinic, slice_):
    outsider = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other_clinic, 'dicomweb:read')}")
    for suffix in ("frames/1", "frames/1/rendered"):
        response = outsider.get(_url(slice_.data, suffix))
        assert response.status_code == 404
        assert b"Not found" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("before", [None, "an older version"])
def test_the_backfill_records_the_layout_of_rows_stored_before_it(before, clinic, slice_):
    recorded = slice_.row.pixel_layout
    if before is not None:
        before = {**recorded, "v": PIXEL_LAYOUT_VERSION - 1}
    Instance.objects.for_tenant(clinic).update(pixel_layout=before)
    call_command("instance_headers_backfill", "--tenant", clinic.slug, stdout=io.StringIO())
    assert Instance.objects.for_tenant(clinic).get().pixel_layout == recorded
