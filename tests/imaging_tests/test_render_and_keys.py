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
from imaging.render import RenderError, thumbnail_png
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
    with pytest.raises(Exception):  # noqa: B017  KMS refuses a different encryption context
        provider.unwrap(wrapped, context=b"tenant-key|B|1")
    with pytest.raises(IntegrityError):
        LocalKeyProvider(b"m" * 32).unwrap(wrapped, context=b"tenant-key|A|1")
