"""Real browser: sign in with the second factor, search, open a CT, scroll, window, measure.

Also: front desk cannot open the viewer, another clinic's member gets 404, and script in
the patient's name stays text in the overlay. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import pytest

from audit.models import Action, AuditEvent
from imaging.services import study_grant, study_grant_revoke
from tests.browser import browser_page, require_chromium, screenshot, sign_in
from tests.helpers import (
    TEST_ACTOR,
    make_clinic,
    make_member,
)
from tests.imaging_tests.helpers import (
    ingest_study,
    synthetic_colour_cine,
    synthetic_ct,
    synthetic_enhanced_ct,
    synthetic_palette,
)

SLICES = 160
SIZE = 128
SPACING_MM = 0.7
# A PN's "=" separates its component groups, so the name carries plain script and the
# description an event handler.
HOSTILE_NAME = "Browser^<script>alert(1)</script>"
HOSTILE_DESCRIPTION = '<img src=x onerror="window.__xss=1">'


def viewer_attr(page, name: str) -> str:
    return page.locator("#viewer").get_attribute(f"data-{name}") or ""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(240)
def test_radiologist_searches_opens_ct_scrolls_windows_and_measures(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    ingest_study(
        clinic, synthetic_ct(slices=2, size=32, patient_name="Other^Patient", patient_id="P-2")
    )
    study = ingest_study(
        clinic,
        synthetic_ct(
            slices=SLICES,
            size=SIZE,
            patient_name=HOSTILE_NAME,
            patient_id="P-1",
            tags={
                "PixelSpacing": [SPACING_MM, SPACING_MM],
                "StudyDescription": HOSTILE_DESCRIPTION,
            },
        ),
    )

    with browser_page() as page:
        errors: list[str] = []
        dialogs: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda message: message.type == "error" and errors.append(message.text),
        )
        page.on(
            "response",
            lambda response: response.status >= 400 and errors.append(response.url),
        )
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        sign_in(page, live_server.url, radiologist, "/t/north/")

        page.get_by_label("Patient, ID or accession").fill("P-1")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url("**/t/north/?s=*")
        assert "P-1" not in page.url
        rows = page.locator("table.worklist tbody tr")
        assert rows.count() == 1
        screenshot(page, "viewer-1-worklist-search")

        rows.first.get_by_role("link").click()
        page.wait_for_url(f"**/studies/{study.pk}/")
        page.get_by_role("link", name="Open viewer").click()
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        assert viewer_attr(page, "slices") == str(SLICES)
        overlay = page.locator(".overlay-tl").inner_text()
        assert "<script>alert(1)</script>" in overlay
        assert HOSTILE_DESCRIPTION in overlay
        assert page.evaluate("window.__xss") is None and not dialogs
        screenshot(page, "viewer-2-first-image")

        page.locator("#slice-slider").fill("150")
        page.wait_for_selector("#viewer[data-slice='150']")
        assert page.locator("#slice-status").inner_text() == f"Slice 150 / {SLICES}"
        screenshot(page, "viewer-3-slice-150")

        before = (viewer_attr(page, "window-center"), viewer_attr(page, "window-width"))
        box = page.locator("#viewer-canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 120, cy + 60, steps=8)
        page.mouse.up()
        after = (viewer_attr(page, "window-center"), viewer_attr(page, "window-width"))
        assert after != before
        assert page.locator("#wl-status").inner_text() == f"W {after[1]} L {after[0]}"
        screenshot(page, "viewer-4-window-level")

        page.locator("#preset").select_option("bone")
        assert viewer_attr(page, "window-width") in ("1800", "1500")

        page.get_by_role("button", name="Measure").click()
        scale = min(box["width"] / SIZE, box["height"] / SIZE)  # fitted
        drag_css = 200
        page.mouse.move(cx - drag_css / 2, cy)
        page.mouse.down()
        page.mouse.move(cx + drag_css / 2, cy, steps=8)
        page.mouse.up()
        expected_mm = drag_css / scale * SPACING_MM
        measured = float(viewer_attr(page, "measure-mm"))
        assert measured == pytest.approx(expected_mm, rel=0.05)
        assert page.locator("#measure-status").inner_text() == f"Distance: {measured:.1f} mm"
        screenshot(page, "viewer-5-measure")
        assert viewer_attr(page, "slice") == "150"

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.keyboard.press("ArrowDown")
        page.wait_for_selector("#viewer[data-slice='151']")
        page.keyboard.press("ArrowRight")  # left and right step too, as the label says
        page.wait_for_selector("#viewer[data-slice='152']")
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector("#viewer[data-slice='151']")
        assert page.locator("#viewer-canvas").bounding_box()["width"] > 300
        screenshot(page, "viewer-6-phone")
        assert not errors, errors  # includes any Content-Security-Policy violation

    viewed = AuditEvent.objects.for_tenant(clinic).filter(action=Action.SERIES_VIEWED)
    assert viewed.count() == 1
    retrieves = AuditEvent.objects.for_tenant(clinic).filter(action=Action.DICOMWEB_RETRIEVE)
    assert retrieves.filter(detail__frames__isnull=False).count() == 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_front_desk_cannot_open_the_viewer_and_an_outsider_gets_404(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    other = make_clinic("south", "South Imaging")
    front_desk = make_member(clinic, "front_desk", email="desk@north.example")
    outsider = make_member(other, "radiologist", email="rad@south.example")
    study = ingest_study(clinic, synthetic_ct(slices=1, size=32))
    viewer_url = f"/t/north/studies/{study.pk}/viewer/"

    with browser_page(width=390, height=844) as page:
        sign_in(page, live_server.url, front_desk, f"/t/north/studies/{study.pk}/")
        assert page.get_by_role("link", name="Open viewer").count() == 0
        response = page.goto(f"{live_server.url}{viewer_url}")
        assert response.status == 403
        screenshot(page, "viewer-7-front-desk-403")

    with browser_page() as page:
        sign_in(page, live_server.url, outsider, "/t/south/")
        response = page.goto(f"{live_server.url}{viewer_url}")
        assert response.status == 404


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_an_open_viewer_drops_its_images_once_the_grant_is_revoked(live_server, settings):
    settings.VIEWER_ACCESS_CHECK_SECONDS = 1
    clinic = make_clinic("north", "North Imaging")
    referring = make_member(clinic, "referring_physician", email="ref@north.example")
    study = ingest_study(clinic, synthetic_ct(slices=3, size=32))
    study_grant(study=study, grantee=referring, download=False, actor=TEST_ACTOR)

    with browser_page() as page:
        sign_in(page, live_server.url, referring, f"/t/north/studies/{study.pk}/")
        page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        page.wait_for_selector("#viewer[data-loaded='3']", timeout=30_000)
        study_grant_revoke(study=study, grantee=referring, actor=TEST_ACTOR)

        # Nothing is left to fetch, so only the access check can notice.
        page.wait_for_selector("#viewer[data-state=ended]", timeout=10_000)
        message = page.locator("#viewer-message")
        screenshot(page, "viewer-8-access-ended")

        assert message.is_visible()
        assert "Access to this study has ended" in message.inner_text()
        assert page.evaluate("window.portalViewer.state().cacheBytes") == 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_a_palette_colour_image_is_shown_in_its_colours(live_server):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, [synthetic_palette(size=64)])

    with browser_page() as page:
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        sign_in(page, live_server.url, radiologist, f"/t/north/studies/{study.pk}/")
        page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
        page.wait_for_selector("#viewer[data-loaded='1']", timeout=30_000)
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        screenshot(page, "viewer-9-palette-colour")
        # Pixels whose red and green differ: none if the indices were drawn as grey.
        coloured = page.evaluate(
            """() => {
              const c = document.getElementById("viewer-canvas");
              const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 1]) > 40) n++;
              return n / (d.length / 4);
            }"""
        )

    assert coloured > 0.1
    frames = [url for url in asked if "/frames/" in url]
    assert frames and all(url.endswith("/rendered") for url in frames)


RED_AND_BLUE = """() => {
  const c = document.getElementById("viewer-canvas");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let red = 0, blue = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 170 && d[i + 2] < 90) red++;
    if (d[i + 2] > 170 && d[i] < 90) blue++;
  }
  return [red, blue];
}"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("jpeg", "as_stored"), [(True, True), (False, False)])
def test_a_colour_cine_stored_as_jpeg_is_decoded_by_the_browser(live_server, jpeg, as_stored):
    # YBR colour frames are asked for as stored JPEG; frames stored otherwise get a 406
    # and the series falls back to the server's rendered PNGs. Either way, the colours.
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, [synthetic_colour_cine(frames=4, jpeg=jpeg)])

    with browser_page() as page:
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        sign_in(page, live_server.url, radiologist, f"/t/north/studies/{study.pk}/")
        page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
        page.wait_for_selector("#viewer[data-loaded='4']", timeout=30_000)
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        screenshot(page, f"viewer-10-colour-cine-{'jpeg' if jpeg else 'native'}")
        red, blue = page.evaluate(RED_AND_BLUE)
        stored_frames = viewer_attr(page, "stored-jpeg-frames")

    assert red > 1000 and blue > 1000
    rendered = [url for url in asked if url.endswith("/rendered")]
    if as_stored:
        assert not rendered and stored_frames == "4"
    else:
        assert len(rendered) == 4 and stored_frames == ""


def _dose_report(study_uid: str) -> bytes:
    """A Basic Text SR in the study, as a CT's dose report arrives: no pixel data."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesNumber = "Dose^Dan", "P-SR", "SR", 99
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_a_series_without_images_says_so_and_the_viewer_carries_on(live_server):
    require_chromium()
    from imaging.models import Series
    from tests.imaging_tests.helpers import ingest

    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(
        clinic, synthetic_ct(slices=3, size=32, patient_name="Dose^Dan", patient_id="P-SR")
    )
    ingest(clinic, _dose_report(study.study_uid))
    report = Series.objects.for_tenant(clinic).get(modality="SR")
    ct = Series.objects.for_tenant(clinic).get(modality="CT")

    with browser_page() as page:
        sign_in(page, live_server.url, radiologist, f"/t/north/studies/{study.pk}/")
        page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        page.locator(f"[data-series-uid='{report.series_uid}']").click()
        message = page.locator("#viewer-message")
        message.wait_for(state="visible", timeout=10_000)
        assert "holds no images" in message.inner_text()
        page.locator(f"[data-series-uid='{ct.series_uid}']").click()
        page.wait_for_selector("#viewer[data-state=ready]", timeout=10_000)

        assert viewer_attr(page, "state") != "ended"
        assert message.is_hidden()


CENTRE_GREY = """() => {
  const c = document.getElementById("viewer-canvas");
  return c.getContext("2d").getImageData(c.width >> 1, c.height >> 1, 1, 1).data[0];
}"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_an_enhanced_ct_is_shown_in_hounsfield_units_and_measured_in_mm(live_server):
    # Its rescale, window and spacing are in functional groups only: frame n holds HU
    # 40(n-1), so through its own brain window frame 2 is mid-grey (white if read as
    # stored values), and a line is measured by the shared pixel spacing.
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, [synthetic_enhanced_ct(frames=3, size=64, spacing=(0.5, 0.5))])

    with browser_page() as page:
        sign_in(page, live_server.url, radiologist, f"/t/north/studies/{study.pk}/")
        page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
        page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
        window = (viewer_attr(page, "window-center"), viewer_attr(page, "window-width"))
        page.keyboard.press("ArrowDown")
        page.wait_for_selector("#viewer[data-slice='2']")
        # Polled from here: wait_for_function evaluates a string, which the page's
        # Content-Security-Policy (no unsafe-eval) refuses.
        grey = 0
        for _ in range(100):
            grey = page.evaluate(CENTRE_GREY)
            if grey > 0:
                break
            page.wait_for_timeout(100)
        screenshot(page, "viewer-11-enhanced-ct")
        page.get_by_role("button", name="Measure").click()
        box = page.locator("#viewer-canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 50, cy)
        page.mouse.down()
        page.mouse.move(cx + 50, cy, steps=5)
        page.mouse.up()
        status = page.locator("#measure-status").inner_text()

    assert window == ("40", "80")
    assert 110 <= grey <= 145
    assert status.endswith(" mm")


def _open_viewer(page, live_server, user, study) -> list[str]:
    """Sign in, open the study's viewer and wait for it; the URLs of its frame requests."""
    urls: list[str] = []
    page.on("request", lambda request: "/frames/" in request.url and urls.append(request.url))
    sign_in(page, live_server.url, user, f"/t/north/studies/{study.pk}/")
    page.goto(f"{live_server.url}/t/north/studies/{study.pk}/viewer/")
    page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
    return urls


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_frames_too_large_for_one_answer_come_in_smaller_batches_still_windowed(
    live_server, monkeypatch
):
    # The server decodes at most 3 frames in one answer here (a tomosynthesis batch of
    # 16 large frames is over its cap): a 406 must halve the batch, not give up windowing.
    from imaging.dicomweb.views import images

    require_chromium()
    frames, size = 24, 64
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 3 * size * size * 2)
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, [synthetic_enhanced_ct(frames=frames, size=size)])

    with browser_page() as page:
        urls = _open_viewer(page, live_server, radiologist, study)
        for _ in range(200):
            if viewer_attr(page, "loaded") == str(frames):
                break
            page.wait_for_timeout(50)
        page.locator("#slice-slider").fill(str(frames))
        page.wait_for_selector(f"#viewer[data-slice='{frames}']")
        page.locator("#preset").select_option("bone")
        wl = page.locator("#wl-status").inner_text()

    assert _asked_in_batches(urls) and not [u for u in urls if u.endswith("/rendered")]
    assert wl.startswith("W 1") and "L " in wl  # the bone preset, applied here


def _asked_in_batches(urls: list[str]) -> bool:
    return any("," in url.rsplit("/frames/", 1)[1] for url in urls)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(120)
def test_a_voi_lut_series_is_shown_as_the_server_renders_it_without_a_window_to_drag(
    live_server,
):
    import pydicom

    require_chromium()
    threshold = [0] * 2048 + [4095] * 2048  # white from stored 2048
    lut = pydicom.Dataset()
    lut.add_new(0x00283002, "US", [len(threshold), 0, 12])
    lut.add_new(0x00283006, "US", threshold)
    files = synthetic_ct(  # stored values 0..4095: half below the threshold, half above
        slices=2,
        size=64,
        tags={
            "Modality": "CR",
            "RescaleIntercept": 0,
            "WindowCenter": None,
            "WindowWidth": None,
            "VOILUTSequence": [lut],
        },
    )
    clinic = make_clinic("north", "North Imaging")
    radiologist = make_member(clinic, "radiologist", email="rad@north.example")
    study = ingest_study(clinic, files)

    with browser_page() as page:
        urls = _open_viewer(page, live_server, radiologist, study)
        page.wait_for_timeout(300)
        values = page.evaluate(
            """() => {
              const c = document.getElementById("viewer-canvas");
              const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
              const counts = {};
              for (let i = 0; i < d.length; i += 4) counts[d[i]] = (counts[d[i]] || 0) + 1;
              return counts;
            }"""
        )
        wl = page.locator("#wl-status").inner_text()
        preset_disabled = page.locator("#preset").is_disabled()

    assert urls and all(url.endswith("/rendered") for url in urls)
    # The LUT's threshold: black and white, greys only where the scaled image's edges
    # blend (a linear window would have drawn a ramp of every grey).
    greys = sum(count for value, count in values.items() if value not in ("0", "255"))
    assert values.get("255", 0) > 1000 and greys < 0.05 * sum(values.values())
    assert wl == "" and preset_disabled
