"""Grey levels follow PS3.3 C.11: the modality LUT, then the VOI (window with its
function, or a VOI LUT), in the output range the VOI defines, never re-stretched to the
frame's own range; thumbnails and rendered frames alike."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from imaging.render import frame_to_uint8, rendered, thumbnail_png

NARROW = np.arange(1000, 1080, 10, dtype=np.uint16)  # 1000..1070: a small part of 0..2000


def _image(values: np.ndarray, **attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 1, len(values)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.astype("<u2").tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _file(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _lut_item(table: list[int], *, first: int, bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", table)  # LUT Data
    return item


def _all_ways(ds: Dataset) -> list[np.ndarray]:
    """The frame as grey levels, the rendered PNG's and the thumbnail's."""
    png = rendered(pydicom.dcmread(io.BytesIO(_file(ds))), media_type="image/png")
    return [
        frame_to_uint8(ds, ds.pixel_array),
        np.asarray(Image.open(io.BytesIO(png)))[0],
        np.asarray(Image.open(io.BytesIO(thumbnail_png(_file(ds)))))[0],
    ]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # C.11.2.1.3.2: ((x - c) / w + 0.5) * 255
        ("LINEAR_EXACT", np.rint(((NARROW - 1000) / 2000 + 0.5) * 255)),
        # C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w))
        ("SIGMOID", np.rint(255 / (1 + np.exp(-4 * (NARROW - 1000.0) / 2000)))),
    ],
)
def test_a_window_function_keeps_its_output_range(function, expected):
    ds = _image(NARROW, WindowCenter=1000, WindowWidth=2000, VOILUTFunction=function)

    for grey in _all_ways(ds):
        assert np.abs(grey.reshape(-1).astype(int) - expected.astype(int)).max() <= 1
        assert grey.max() < 140  # not stretched to 255 over the frame's own range


def test_a_voi_lut_without_a_window_is_applied():
    threshold = [0] * 2048 + [4095] * 2048  # 12-bit output: black below 2048, white from it
    values = np.array([0, 1000, 2000, 2047, 2048, 2500, 3000, 4095], dtype=np.uint16)
    ds = _image(values, VOILUTSequence=[_lut_item(threshold, first=0, bits=12)])

    for grey in _all_ways(ds):
        assert grey.reshape(-1).tolist() == [0, 0, 0, 0, 255, 255, 255, 255]


def test_an_8_bit_voi_lut_of_more_than_256_entries_does_not_wrap():
    ramp = [round(v * 255 / 4095) for v in range(4096)]  # 8-bit output over 4096 entries
    ds = _image(NARROW, VOILUTSequence=[_lut_item(ramp, first=0, bits=8)])

    expected = [ramp[v] for v in NARROW]  # 62..67
    for grey in _all_ways(ds):
        assert grey.reshape(-1).tolist() == expected


def test_a_12_bit_modality_lut_is_applied_not_dropped():
    # A decreasing table: stored 0 is the brightest. Dropped, the image would be inverted.
    falling = [4095 - v for v in range(4096)]
    values = np.array([0, 1024, 2048, 3072, 4095], dtype=np.uint16)
    ds = _image(
        values,
        ModalityLUTSequence=[_lut_item(falling, first=0, bits=12)],
        WindowCenter=2048,
        WindowWidth=4096,
    )
    windowed = rendered(
        pydicom.dcmread(io.BytesIO(_file(ds))), media_type="image/png", window=(2048.0, 4096.0)
    )

    for grey in [*_all_ways(ds), np.asarray(Image.open(io.BytesIO(windowed)))[0]]:
        row = grey.reshape(-1).astype(int)
        assert row[0] >= 254 and row[-1] <= 1 and all(np.diff(row) < 0)


def test_a_constant_frame_without_a_window_is_mid_grey():
    ds = _image(np.full(8, 500, dtype=np.uint16))

    for grey in _all_ways(ds):
        assert set(grey.reshape(-1).tolist()) == {127}
