"""Thumbnails look right (windowing, MONOCHROME1, colour) and the KMS key provider works."""

from __future__ import annotations

import io

import boto3
import numpy as np
import pydicom
import pytest
from moto import mock_aws
from PIL import Image

from imaging.crypto import IntegrityError
from imaging.keys import AwsKmsKeyProvider, LocalKeyProvider
from imaging.render import RenderError, frame_to_uint8, rendered, thumbnail_png, windowed_by_table
from tests.imaging_tests.helpers import sample_bytes, synthetic_ct


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int32)


def _with(data: bytes, **attributes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_thumbnail_is_small_and_png():
    (data,) = synthetic_ct(slices=1, size=512)

    image = Image.open(io.BytesIO(thumbnail_png(data)))

    assert image.format == "PNG"
    assert max(image.size) == 256


def test_monochrome1_is_inverted():
    (data,) = synthetic_ct(slices=1, size=64)
    normal = _grey(thumbnail_png(data))
    inverted = _grey(thumbnail_png(_with(data, PhotometricInterpretation="MONOCHROME1")))

    assert np.abs((255 - normal) - inverted).max() <= 1


def test_window_from_the_file_is_applied():
    (data,) = synthetic_ct(slices=1, size=64)
    narrow = _grey(thumbnail_png(_with(data, WindowCenter=-900, WindowWidth=50)))
    wide = _grey(thumbnail_png(_with(data, WindowCenter=1000, WindowWidth=4000)))

    # A narrow window low in the range saturates most pixels to white.
    assert (narrow == 255).mean() > 0.8
    assert (wide == 255).mean() < 0.2


def _ct_with_values(values: list[int], **attributes) -> pydicom.Dataset:
    (data,) = synthetic_ct(slices=1, size=4)
    ds = pydicom.dcmread(io.BytesIO(_with(data, **attributes)))
    ds.PixelData = np.array(values, dtype=np.uint16).reshape(4, 4).tobytes()
    return ds


def test_linear_window_follows_the_standard_through_the_table():
    # Stored values with rescale -1024: HU -1024 .. 2000; window 40/400 spans -160..240 HU.
    stored = [0, 800, 863, 864, 1024, 1063, 1064, 1065, 1264, 1265, 1300, 3000, 3024, 5, 9, 10]
    ds = _ct_with_values(stored, RescaleIntercept=-1024, RescaleSlope=1)
    hu = np.array(stored, dtype=np.float64).reshape(4, 4) - 1024

    grey = windowed_by_table(ds, ds.pixel_array, (40.0, 400.0))

    # PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped.
    expected = np.clip(np.rint(((hu - 39.5) / 399 + 0.5) * 255), 0, 255)
    assert grey is not None and grey.dtype == np.uint8
    assert np.array_equal(grey, expected.astype(np.uint8))
    assert grey[0, 0] == 0 and grey[2, 3] == 255  # below and above the window


def test_table_matches_floating_point_windowing_on_a_real_ct_with_the_ct_default():
    ds = pydicom.dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert "WindowCenter" not in ds  # so the CT default window applies
    centre, width = 40.0, 400.0

    grey = frame_to_uint8(ds, ds.pixel_array)

    expected = np.clip(np.rint(((values - (centre - 0.5)) / (width - 1) + 0.5) * 255), 0, 255)
    assert np.array_equal(grey, expected.astype(np.uint8))


def test_table_inverts_monochrome1_and_skips_what_it_cannot_do():
    ds = _ct_with_values([0] * 8 + [4000] * 8, PhotometricInterpretation="MONOCHROME1")
    grey = windowed_by_table(ds, ds.pixel_array, (40.0, 400.0))
    colour = pydicom.dcmread(io.BytesIO(sample_bytes("SC_rgb_rle.dcm")))
    sigmoid = _ct_with_values([0] * 16, VOILUTFunction="SIGMOID")

    assert grey is not None and grey[0, 0] == 255 and grey[3, 3] == 0
    assert windowed_by_table(colour, colour.pixel_array, (128.0, 256.0)) is None
    assert windowed_by_table(sigmoid, sigmoid.pixel_array, (40.0, 400.0)) is None


def test_rendered_frame_uses_the_requested_window():
    ds = _ct_with_values([0] * 8 + [1064] * 8, RescaleIntercept=-1024, RescaleSlope=1)

    soft = _grey(rendered(ds, media_type="image/png", window=(40.0, 400.0)))
    bone = _grey(rendered(ds, media_type="image/png", window=(1000.0, 10.0)))

    assert soft[0, 0] == 0 and 126 <= soft[3, 3] <= 129
    assert bone.max() == 0


def test_ct_without_a_window_uses_the_modality_default():
    (data,) = synthetic_ct(slices=1, size=64)

    png = thumbnail_png(_with(data, WindowCenter=None, WindowWidth=None))

    assert _grey(png).std() > 0


def test_colour_image_stays_colour():
    png = thumbnail_png(sample_bytes("SC_rgb_rle.dcm"))

    assert Image.open(io.BytesIO(png)).mode == "RGB"


def test_image_without_pixels_is_a_render_error():
    with pytest.raises(RenderError):
        thumbnail_png(sample_bytes("test-SR.dcm"))


@mock_aws
def test_kms_provider_wraps_with_the_clinic_context():
    client = boto3.client("kms", region_name="eu-central-1")
    key_id = client.create_key(Description="portal master")["KeyMetadata"]["KeyId"]
    provider = AwsKmsKeyProvider(key_id, client=client)
    secret = b"s" * 32

    wrapped = provider.wrap(secret, context=b"tenant-key|A|1")

    assert secret not in wrapped
    assert provider.unwrap(wrapped, context=b"tenant-key|A|1") == secret
    with pytest.raises(IntegrityError):  # KMS refuses a different encryption context
        provider.unwrap(wrapped, context=b"tenant-key|B|1")
    with pytest.raises(IntegrityError):  # nor a blob altered
        provider.unwrap(wrapped[:-1] + bytes([wrapped[-1] ^ 1]), context=b"tenant-key|A|1")
    with pytest.raises(IntegrityError):
        LocalKeyProvider(b"m" * 32).unwrap(wrapped, context=b"tenant-key|A|1")


def _stretched_in_floating_point(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, (0.5, 99.5))
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


@pytest.mark.parametrize(
    ("dtype", "rescale", "photometric"),
    [
        (np.uint8, None, "MONOCHROME2"),
        (np.uint16, None, "MONOCHROME2"),
        (np.int16, (2.0, -100.0), "MONOCHROME2"),
        (np.uint16, (-1.0, 4095.0), "MONOCHROME1"),  # a negative slope reverses the stretch
        (np.dtype(">u2"), None, "MONOCHROME2"),  # big endian, as a BE file decodes
    ],
)
def test_a_frame_without_a_window_is_stretched_as_in_floating_point(dtype, rescale, photometric):
    """The stretch goes through a table of every stored value; it must read as the
    floating-point stretch over the rescaled values does."""
    high = 200 if np.dtype(dtype).itemsize == 1 else 3000
    pixels = np.random.default_rng(7).integers(0, high, (64, 48)).astype(dtype)
    ds = pydicom.Dataset()
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "MR", 1, photometric
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    slope, intercept = rescale or (1.0, 0.0)

    grey = frame_to_uint8(ds, pixels)

    expected = _stretched_in_floating_point(pixels.astype(np.float64) * slope + intercept)
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    assert grey.dtype == np.uint8 and np.array_equal(grey, expected)


def test_a_large_frames_stretch_takes_its_percentiles_from_a_sample():
    pixels = np.random.default_rng(3).integers(0, 4096, (2048, 2048)).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.Modality, ds.SamplesPerPixel = "MR", 1

    grey = frame_to_uint8(ds, pixels)

    exact = _stretched_in_floating_point(pixels.astype(np.float64))
    assert np.abs(grey.astype(int) - exact.astype(int)).max() <= 1
