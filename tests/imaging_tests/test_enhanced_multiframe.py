"""Enhanced multi-frame objects (Enhanced CT, MR, ...) keep each frame's rescale and window
in functional groups, not at the top level: rendered frames, thumbnails and the layout
path read them there, per frame where the frames differ."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image

from imaging.models import Instance
from imaging.render import pixel_layout, pixel_value_offset, rendered, thumbnail_png
from tests.helpers import response_bytes
from tests.imaging_tests.dicomweb_support import token_for
from tests.imaging_tests.helpers import ingest, synthetic_enhanced_ct

# Frame n of the synthetic object holds HU 40(n-1) everywhere: through a brain window
# (40/80) frame 1 is black, frame 2 mid-grey and frame 3 white.
BRAIN = [(40.0, 80.0)] * 3


def _grey(image: bytes) -> int:
    return int(np.asarray(Image.open(io.BytesIO(image)).convert("L"))[0, 0])


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_each_frame_is_rescaled_and_windowed_by_its_functional_groups():
    ds = _read(synthetic_enhanced_ct(windows=BRAIN))

    greys = [_grey(rendered(ds, number=n, media_type="image/png")) for n in (1, 2, 3)]

    assert greys[0] == 0 and 126 <= greys[1] <= 130 and greys[2] == 255


def test_a_frame_with_a_window_of_its_own_is_drawn_through_it():
    # The same HU 40 (frame 2) as the middle of a 40/80 window, and as the bottom of 200/50.
    ds = _read(synthetic_enhanced_ct(windows=[(40.0, 80.0), (200.0, 50.0), (40.0, 80.0)]))

    middle = _grey(rendered(ds, number=2, media_type="image/png"))
    asked = _grey(rendered(ds, number=2, media_type="image/png", window=(40.0, 80.0)))

    assert middle == 0
    assert 126 <= asked <= 130  # a requested window still takes the frame's rescale


def test_the_thumbnail_is_the_middle_frame_through_its_groups():
    png = thumbnail_png(synthetic_enhanced_ct(windows=BRAIN))

    assert 126 <= _grey(png) <= 130


def test_reading_one_frames_groups_leaves_the_file_read_as_it_was():
    ds = _read(synthetic_enhanced_ct(windows=BRAIN))

    rendered(ds, number=2, media_type="image/png")

    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds


def _layout(data: bytes) -> dict:
    ds = _read(data)
    return pixel_layout(ds, data=data, offset=pixel_value_offset(ds))


def test_the_layout_records_one_grey_table_only_when_the_frames_agree():
    alike = _layout(synthetic_enhanced_ct(windows=BRAIN))
    differing = _layout(synthetic_enhanced_ct(windows=[(40.0, 80.0), (200.0, 50.0), (0, 10)]))

    assert alike["grey"] == {
        "slope": 1.0,
        "intercept": -1024.0,
        "window": [40.0, 80.0],
        "inverted": False,
    }
    assert differing["grey"] is None and "offset" in differing  # frames still by layout


def _frame_url(data: bytes, number: int) -> str:
    ds = _read(data)
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{number}/rendered"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "windows", [BRAIN, [(40.0, 80.0), (40.0, 80.0), (1000.0, 2000.0)]], ids=["alike", "own"]
)
def test_dicomweb_renders_each_stored_frame_through_its_groups(clinic, windows):
    data = synthetic_enhanced_ct(windows=windows)
    ingest(clinic, data)
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")

    greys = [
        _grey(response_bytes(reader.get(_frame_url(data, n), HTTP_ACCEPT="image/png")))
        for n in (1, 2, 3)
    ]

    expected_third = 255 if windows == BRAIN else 10  # HU 80 through 1000/2000
    assert greys[0] == 0 and 126 <= greys[1] <= 130
    assert abs(greys[2] - expected_third) <= 2


@pytest.mark.django_db
def test_the_metadata_carries_the_groups_the_viewer_reads(clinic):
    data = synthetic_enhanced_ct(windows=BRAIN, spacing=(0.25, 0.5))
    ingest(clinic, data)
    row = Instance.objects.for_tenant(clinic).get()
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, 'dicomweb:read')}")
    url = f"/dicomweb/studies/{row.study.study_uid}/series/{row.series.series_uid}/metadata"

    (instance,) = __import__("json").loads(response_bytes(reader.get(url)))

    shared = instance["52009229"]["Value"][0]
    per_frame = instance["52009230"]["Value"]
    assert shared["00289110"]["Value"][0]["00280030"]["Value"] == [0.25, 0.5]
    assert shared["00289145"]["Value"][0]["00281052"]["Value"] == [-1024]
    assert [f["00289132"]["Value"][0]["00281050"]["Value"] for f in per_frame] == [[40]] * 3
