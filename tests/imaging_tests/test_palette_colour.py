"""Palette colour images are shown in their colours, not as grey indices.

A PALETTE COLOR image (ultrasound, nuclear medicine, secondary captures) stores one index
per pixel and three tables that give each index its red, green and blue (PS3.3
C.7.6.3.1.5). Rendered frames, thumbnails and the viewer's images go through the tables;
a window asked for applies to grey levels and leaves them as they are.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image
from pydicom.pixels import apply_color_lut

from imaging.models import Series
from imaging.render import RenderError, rendered, rendered_file, thumbnail_png
from imaging.services import thumbnail_bytes
from imaging.tasks import series_thumbnail
from tests.helpers import TEST_ACTOR
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, sample_bytes, synthetic_palette


def expected_rgb(data: bytes, frame: int = 1) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1)) > 1:
        pixels = pixels[frame - 1]
    rgb = apply_color_lut(pixels, ds)
    return (rgb >> 8 if rgb.max() > 255 else rgb).astype(np.uint8)


def png_pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: sample_bytes("examples_palette.dcm"), id="pydicom-8bit-16bit-table"),
        pytest.param(lambda: synthetic_palette(bits=16), id="16bit-indices"),
        pytest.param(lambda: synthetic_palette(bits=8, entry_bits=8), id="8bit-table"),
        pytest.param(lambda: synthetic_palette(frames=3), id="multi-frame"),
    ],
)
def test_a_rendered_palette_frame_has_the_tables_colours(data):
    data = data()
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = int(ds.get("NumberOfFrames", 1))

    png = rendered(ds, number=frames, media_type="image/png")

    colours = png_pixels(png)
    assert np.array_equal(colours, expected_rgb(data, frames))
    assert not np.array_equal(colours[..., 0], colours[..., 1])  # not grey


def test_sixteen_bit_entries_holding_eight_bit_values_are_not_shown_black():
    data = synthetic_palette(eight_bit_values=True)

    colours = png_pixels(rendered(pydicom.dcmread(io.BytesIO(data)), media_type="image/png"))

    assert colours.max() == 255
    assert np.array_equal(colours, expected_rgb(data))


def test_more_than_256_eight_bit_entries_index_the_whole_table():
    # 4,096 entries of 8-bit values: indexing through the table's own type would wrap
    # every index above 255 (pydicom 3.0's lookup does).
    data = synthetic_palette(bits=16, entry_bits=8)
    ds = pydicom.dcmread(io.BytesIO(data))
    index = ds.pixel_array.astype(np.int64)

    colours = png_pixels(rendered(ds, media_type="image/png")).astype(np.int64)

    red = index * 255 // 4095
    assert index.max() > 255
    assert np.array_equal(colours[..., 0], red)
    assert np.array_equal(colours[..., 1], 255 - red)
    assert np.all(colours[..., 2] == 85)


def test_an_alpha_table_is_not_applied():
    data = synthetic_palette()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.AlphaPaletteColorLookupTableDescriptor = ds.RedPaletteColorLookupTableDescriptor
    ds.AlphaPaletteColorLookupTableData = bytes(len(ds.RedPaletteColorLookupTableData))

    assert np.array_equal(png_pixels(rendered(ds, media_type="image/png")), expected_rgb(data))


@pytest.mark.parametrize("window", [(40.0, 400.0), (100.0, 1.0)])
def test_a_window_leaves_a_palette_images_colours_as_they_are(window):
    data = synthetic_palette()
    ds = pydicom.dcmread(io.BytesIO(data))

    assert rendered(ds, media_type="image/png", window=window) == rendered(
        ds, media_type="image/png"
    )


def test_a_palette_jpeg_is_colour():
    data = synthetic_palette()
    image = Image.open(
        io.BytesIO(rendered(pydicom.dcmread(io.BytesIO(data)), media_type="image/jpeg"))
    )

    assert image.mode == "RGB"
    colours = np.asarray(image).astype(int)
    assert np.abs(colours - expected_rgb(data).astype(int)).mean() < 8  # lossy, same image


def test_a_palette_thumbnail_is_colour():
    data = synthetic_palette(frames=3)

    thumbnail = png_pixels(thumbnail_png(data))

    assert np.array_equal(thumbnail, expected_rgb(data, 2))  # the middle frame, full size


def test_a_palette_image_without_its_tables_is_a_render_error():
    ds = pydicom.dcmread(io.BytesIO(synthetic_palette()))
    for colour in ("Red", "Green", "Blue"):
        delattr(ds, f"{colour}PaletteColorLookupTableData")

    with pytest.raises(RenderError):
        rendered(ds, media_type="image/png")


# --- Through DICOMweb and the thumbnail task ---------------------------------------------


@pytest.fixture
def palette_stored(clinic, data_dir) -> bytes:
    data = synthetic_palette(frames=2)
    ingest(clinic, data)
    return data


def _rendered_url(data: bytes, frame: int) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{frame}/rendered"
    )


@pytest.mark.django_db
def test_dicomweb_renders_a_stored_palette_frame_in_colour(clinic, palette_stored):
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")

    response = reader.get(_rendered_url(palette_stored, 2), HTTP_ACCEPT="image/png")

    assert response.status_code == 200
    assert np.array_equal(png_pixels(response.content), expected_rgb(palette_stored, 2))


@pytest.mark.django_db
def test_the_layout_path_renders_palette_colour_as_parsing_does(clinic, palette_stored):
    from imaging.models import Instance

    layout = Instance.objects.for_tenant(clinic).get().pixel_layout
    ds = pydicom.dcmread(io.BytesIO(palette_stored))

    by_layout = rendered_file(palette_stored, layout=layout, number=2, media_type="image/png")

    assert by_layout == rendered(ds, number=2, media_type="image/png")
    assert np.array_equal(png_pixels(by_layout), expected_rgb(palette_stored, 2))


@pytest.mark.django_db
def test_another_clinic_gets_no_rendered_palette_frame(other_clinic, palette_stored):
    outsider = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(other_clinic, 'dicomweb:read')}")

    response = outsider.get(_rendered_url(palette_stored, 1), HTTP_ACCEPT="image/png")

    assert response.status_code == 404


@pytest.mark.django_db
def test_the_series_thumbnail_of_a_palette_image_is_colour(clinic, palette_stored):
    series = Series.objects.for_tenant(clinic).get()
    series_thumbnail(tenant_id=str(clinic.pk), series_id=str(series.pk))
    series.refresh_from_db()

    png = thumbnail_bytes(series=series, actor=TEST_ACTOR)

    assert png is not None
    colours = png_pixels(png)
    assert not np.array_equal(colours[..., 0], colours[..., 1])


def test_a_dark_frame_of_a_sixteen_bit_palette_stays_dark():
    data = synthetic_palette(frames=2)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.NumberOfFrames = 1
    ds.PixelData = np.zeros((24, 24), dtype="<u2").tobytes()  # index 0: red 0, green at top
    ds.GreenPaletteColorLookupTableData = np.full(4096, 200, dtype="<u2").tobytes()
    ds.BluePaletteColorLookupTableData = np.full(4096, 100, dtype="<u2").tobytes()

    colours = png_pixels(rendered(ds, media_type="image/png"))

    # Entries of 200 and 100 out of 65535: near black, not read as 8-bit values.
    assert colours.max() == 0
