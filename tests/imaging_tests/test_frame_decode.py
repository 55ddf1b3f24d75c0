"""One frame of compressed pixel data is decoded on its own, never with every other.

A 2,000-frame compressed cine decoded whole for each frame asked for (WADO-RS frames,
rendered frames, thumbnails, the viewer) is gigabytes and seconds per request. Each
frame must still be exactly the frame pydicom's whole-object decode gives, whatever the
encapsulation: with or without a Basic Offset Table, an Extended Offset Table, several
fragments a frame. A frame whose header claims more than `RENDER_MAX_FRAME_BYTES` is
refused before anything is allocated.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import JPEG2000Lossless, generate_uid

from imaging.render import (
    FrameTooLarge,
    NoSuchFrame,
    RenderError,
    frame_count,
    frame_native_bytes,
    frame_pixels,
    frame_to_uint8,
    frames_native_bytes,
    pixel_data_native_bytes,
    rendered,
    thumbnail_png,
)
from tests.imaging_tests.dicomweb_support import http, instance_url
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_ct

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's notes on odd files


def _part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _cine(frames: int = 12, size: int = 64) -> pydicom.Dataset:
    """A multi-frame 16-bit grey MR compressed as JPEG 2000 lossless, each frame distinct."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Cine", "SYN-CINE", "MR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(frames, size, size), dtype=np.uint16)
    pixels[:, 0, 0] = np.arange(frames)  # no two frames alike
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return _read(_part10(ds))


def _encapsulated(ds: pydicom.Dataset, how: str) -> bytes:
    """`ds` with its frames encapsulated again: `how` names the offset table and the
    number of fragments a frame."""
    frames = list(generate_frames(ds.PixelData, number_of_frames=frame_count(ds)))
    ds = _read(_part10(ds))
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    if how == "extended offset table":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    else:
        table, fragments = how.split(", ")
        ds.PixelData = encapsulate(
            frames,
            fragments_per_frame=int(fragments.split()[0]),
            has_bot=table == "offset table",
        )
    return _part10(ds)


CINE_ENCAPSULATIONS = [
    "offset table, 1 fragment",
    "no offset table, 1 fragment",
    "offset table, 3 fragments",
    "no offset table, 3 fragments",  # frames found by their end-of-codestream markers
    "extended offset table",
]

BUNDLED = [
    "examples_ybr_color.dcm",  # 30 frames JPEG baseline, YBR_FULL_422 decoded to RGB
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "rtdose_rle.dcm",  # 15 frames of 32 bits, no offset table
    "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


VARIANTS = BUNDLED + [f"cine, {how}" for how in CINE_ENCAPSULATIONS]


def _variant(name: str) -> bytes:
    if name.startswith("cine, "):
        return _encapsulated(_cine(), name.removeprefix("cine, "))
    return sample_bytes(name)


@pytest.fixture
def decodes(monkeypatch) -> list[int | None]:
    """The frame index of each decode of encapsulated data (None: every frame)."""
    calls: list[int | None] = []
    whole_or_one = Decoder._as_array_encapsulated

    def spy(runner, index):
        calls.append(index)
        return whole_or_one(runner, index)

    monkeypatch.setattr(Decoder, "_as_array_encapsulated", staticmethod(spy))
    return calls


@pytest.mark.parametrize("name", VARIANTS)
def test_each_frame_is_the_frame_of_the_whole_decode(name):
    data = _variant(name)
    whole = _read(data).pixel_array
    frames = frame_count(_read(data))

    pixels = [frame_pixels(_read(data), number) for number in range(1, frames + 1)]

    expected = list(whole) if frames > 1 else [whole]
    assert len(pixels) == len(expected)
    for got, want in zip(pixels, expected, strict=True):
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


@pytest.mark.parametrize("name", VARIANTS)
def test_several_frames_of_one_request_are_those_of_the_whole_decode(name):
    data = _variant(name)
    whole = _read(data).pixel_array
    frames = frame_count(_read(data))
    numbers = list(range(frames, 0, -1))  # every frame, last first

    payloads = frames_native_bytes(data, layout=None, numbers=numbers)

    expected = [
        (whole[n - 1] if frames > 1 else whole).astype(whole.dtype.newbyteorder("<"))
        for n in numbers
    ]
    assert payloads == [frame.tobytes() for frame in expected]


@pytest.mark.parametrize("how", CINE_ENCAPSULATIONS)
def test_one_frame_of_a_compressed_cine_decodes_that_frame_only(how, decodes):
    data = _encapsulated(_cine(), how)

    frame_pixels(_read(data), 7)

    assert decodes == [6]


def test_a_rendered_frame_and_a_thumbnail_decode_one_frame_only(decodes):
    data = _encapsulated(_cine(frames=12), "no offset table, 3 fragments")

    rendered(_read(data), number=4, media_type="image/png")
    thumbnail_png(data)

    assert decodes == [3, 6]  # the thumbnail is of the middle frame, 7 of 12


def test_the_thumbnail_is_the_middle_frame_as_before():
    data = sample_bytes("examples_ybr_color.dcm")
    ds = _read(data)
    middle = ds.pixel_array[frame_count(ds) // 2]
    image = Image.fromarray(frame_to_uint8(ds, middle))
    image.thumbnail((256, 256))
    expected = io.BytesIO()
    image.save(expected, format="PNG", optimize=True)

    png = thumbnail_png(data)

    assert png == expected.getvalue()


def _with_corrupt_frame(number: int) -> bytes:
    """A compressed cine whose frame `number` is not a codestream at all."""
    ds = _cine(frames=5)
    frames = list(generate_frames(ds.PixelData, number_of_frames=5))
    frames[number - 1] = b"\x00" * len(frames[number - 1])
    ds.PixelData = encapsulate(frames, has_bot=True)
    return _part10(ds)


def test_a_frame_decodes_though_another_frame_is_corrupt():
    data = _with_corrupt_frame(3)
    reference = _cine(frames=5).pixel_array

    first = frame_pixels(_read(data), 1)
    several = frames_native_bytes(data, layout=None, numbers=[5, 2])

    assert np.array_equal(first, reference[0])
    assert several == [reference[4].tobytes(), reference[1].tobytes()]


def test_the_corrupt_frame_itself_is_a_short_render_error():
    data = _with_corrupt_frame(3)

    with pytest.raises(RenderError) as raised:
        frame_pixels(_read(data), 3)

    assert not isinstance(raised.value, NoSuchFrame | FrameTooLarge)
    assert len(str(raised.value)) <= 200


@pytest.mark.parametrize("number", [0, -1, 13, 2000])
def test_a_frame_out_of_range_is_no_such_frame_and_decodes_nothing(number, decodes):
    data = _encapsulated(_cine(frames=12), "offset table, 1 fragment")

    with pytest.raises(NoSuchFrame):
        frame_pixels(_read(data), number)
    with pytest.raises(NoSuchFrame):
        frames_native_bytes(data, layout=None, numbers=[1, number])

    assert decodes == []


def _claiming(*, rows: int, columns: int, frames: int = 2) -> bytes:
    """A few hundred bytes whose header claims `frames` RGB frames of `rows` x `columns`
    at 16 bits."""
    ds = _cine(frames=2)
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = encapsulate([b"\xff\x4f\xff\xd9"] * frames, has_bot=True)
    return _part10(ds)


def test_a_frame_larger_than_the_cap_is_refused_without_allocating(monkeypatch):
    data = _claiming(rows=65535, columns=65535, frames=2000)  # 24 GiB a frame

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder was called")

    monkeypatch.setattr(Decoder, "as_array", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge) as one:
            frame_pixels(_read(data), 1)
        with pytest.raises(FrameTooLarge):
            frames_native_bytes(data, layout=None, numbers=[1, 2])
        with pytest.raises(FrameTooLarge):
            rendered(_read(data), number=1000)
        with pytest.raises(FrameTooLarge):
            thumbnail_png(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 * 2**20
    assert isinstance(one.value, RenderError)  # the callers' 4xx, never a 500
    assert "25,769,017,350 bytes" in str(one.value)


def test_the_cap_is_the_setting(settings):
    data = sample_bytes("examples_ybr_color.dcm")
    frame_bytes = 240 * 320 * 3  # Rows x Columns x samples x 1 byte

    settings.RENDER_MAX_FRAME_BYTES = frame_bytes
    at_the_cap = frame_pixels(_read(data), 2)
    settings.RENDER_MAX_FRAME_BYTES = frame_bytes - 1
    with pytest.raises(FrameTooLarge):
        frame_pixels(_read(data), 2)

    assert at_the_cap.shape == (240, 320, 3)


def test_the_cap_holds_for_every_frame_of_the_whole_pixel_data_too(settings):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    settings.RENDER_MAX_FRAME_BYTES = 100 * 100 * 3 - 1

    with pytest.raises(FrameTooLarge):
        pixel_data_native_bytes(_read(data))


def test_the_cap_defaults_to_256_mib():
    over = _claiming(rows=8192, columns=8192)  # 384 MiB a frame

    with pytest.raises(FrameTooLarge) as raised:
        frame_pixels(_read(over), 1)
    under = frame_pixels(_read(sample_bytes("examples_ybr_color.dcm")), 1)

    assert "268,435,456 bytes a frame may take" in str(raised.value)
    assert under.shape == (240, 320, 3)


def test_an_uncompressed_frame_over_the_cap_is_not_rendered(settings):
    (data,) = synthetic_ct(slices=1, size=64)  # 64 x 64 x 2 bytes, native
    settings.RENDER_MAX_FRAME_BYTES = 64 * 64 * 2 - 1

    with pytest.raises(FrameTooLarge):
        rendered(_read(data))
    with pytest.raises(FrameTooLarge):
        thumbnail_png(data)
    assert frame_native_bytes(_read(data), 1)  # sent as stored: a slice, not a render


@pytest.mark.django_db
def test_a_rendered_frame_over_the_cap_is_a_clear_4xx(clinic, read_token, settings):
    data = sample_bytes("SC_rgb_rle_2frame.dcm")
    ingest(clinic, data)
    settings.RENDER_MAX_FRAME_BYTES = 1000

    response = http(read_token).get(f"{instance_url(_read(data))}/frames/2/rendered")

    assert 400 <= response.status_code < 500
    assert "a frame may take" in response.text


def test_a_single_frame_instance_is_decoded_as_before():
    data = sample_bytes("SC_rgb_rle.dcm")

    pixels = frame_pixels(_read(data), 1)

    assert np.array_equal(pixels, _read(data).pixel_array)


@pytest.mark.parametrize(
    "name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg.dcm", "examples_ybr_color.dcm"]
)
def test_a_ybr_colour_frame_renders_in_the_colours_pydicom_decodes(name):
    ds = _read(sample_bytes(name))
    expected = ds.pixel_array  # pydicom returns YBR as RGB

    shown = np.asarray(Image.open(io.BytesIO(rendered(ds, media_type="image/png"))))

    first = expected[0] if expected.ndim == 4 else expected
    assert np.array_equal(shown, first)
