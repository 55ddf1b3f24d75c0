"""Frames of uncompressed data read straight from the pixel data: pydicom's values, one frame.

`frame_pixels` reads uncompressed 8- and 16-bit one-sample frames itself. Whatever it
returns must equal pydicom's `pixel_array` (unused high bits cleared, the sign extended
from Bits Stored), and the grey table must equal windowing in floating point.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from imaging.render import RenderError, frame_native_bytes, frame_pixels, windowed_by_table
from tests.imaging_tests.helpers import sample_bytes


def _multiframe(
    frames: np.ndarray, *, bits_stored: int, signed: bool, syntax=ExplicitVRLittleEndian
) -> pydicom.Dataset:
    """A multi-frame dataset whose 16-bit words carry `frames` as stored."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    ds.Modality = "MR"
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = frames.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(out.getvalue()))


def _garbage_high_bits(shape: tuple[int, ...]) -> np.ndarray:
    words = np.random.default_rng(7).integers(0, 1 << 16, size=shape, dtype=np.uint32)
    return words.astype(np.uint16)  # the top 4 bits of a 12-bit value hold anything


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # 16-bit signed
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
        "examples_overlay.dcm",  # 12 of 16 bits, an overlay in the bits above
        "examples_palette.dcm",  # 8-bit palette indices
        "MR_small_bigendian.dcm",  # not read directly: pydicom's
    ],
)
def test_a_frame_holds_pydicoms_values(name):
    ds = pydicom.dcmread(io.BytesIO(sample_bytes(name)))

    pixels = frame_pixels(ds, 1)

    assert pixels.dtype == ds.pixel_array.dtype
    assert np.array_equal(pixels, ds.pixel_array)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_every_frame_of_twelve_bit_data_with_junk_above_is_pydicoms(signed, syntax):
    ds = _multiframe(_garbage_high_bits((3, 8, 6)), bits_stored=12, signed=signed, syntax=syntax)
    everything = ds.pixel_array

    for number in (1, 2, 3):
        assert np.array_equal(frame_pixels(ds, number), everything[number - 1])
        assert (
            frame_native_bytes(ds, number)
            == everything[number - 1].astype(everything.dtype.newbyteorder("<")).tobytes()
        )
    assert frame_pixels(ds, 1).min() >= (-2048 if signed else 0)
    assert frame_pixels(ds, 1).max() <= (2047 if signed else 4095)


def test_uncompressed_frames_do_not_go_through_pydicoms_decoder(monkeypatch):
    native = pydicom.dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    compressed = pydicom.dcmread(io.BytesIO(sample_bytes("MR_small_RLE.dcm")))
    expected = native.pixel_array.copy()

    def no_decoding(self):
        raise RuntimeError("decoder called")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoding))

    assert np.array_equal(frame_pixels(native, 1), expected)
    with pytest.raises(RenderError, match="decoder called"):
        frame_pixels(compressed, 1)


def test_truncated_pixel_data_is_still_a_render_error():
    ds = pydicom.dcmread(io.BytesIO(sample_bytes("MR_truncated.dcm")))

    with pytest.raises(RenderError):
        frame_pixels(ds, 1)


@pytest.mark.parametrize("signed", [False, True])
def test_the_grey_table_matches_floating_point_over_the_whole_range(signed):
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    values = np.linspace(info.min, info.max, num=64 * 64).astype(dtype)
    values[:4] = [info.min, info.max, 0, -1 if signed else 1]
    ds = _multiframe(values.view(np.uint16).reshape(1, 64, 64), bits_stored=16, signed=signed)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
    pixels = frame_pixels(ds, 1)

    grey = windowed_by_table(ds, pixels, (40.0, 350.0))

    hu = pixels.astype(np.float64) * 0.5 - 1024
    expected = np.clip(np.rint(((hu - 39.5) / 349 + 0.5) * 255), 0, 255).astype(np.uint8)
    assert grey is not None
    assert np.array_equal(grey, expected)
