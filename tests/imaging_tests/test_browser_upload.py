"""Real browser: a technologist uploads files and sees progress and a per-file result."""

from __future__ import annotations

import pytest

from imaging.models import Instance
from tests.browser import browser_page, require_chromium, screenshot, sign_in
from tests.helpers import make_clinic, make_member
from tests.imaging_tests.helpers import synthetic_ct


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(180)
def test_upload_page_shows_progress_and_results(live_server, tmp_path):
    require_chromium()
    clinic = make_clinic("north", "North Imaging")
    user = make_member(clinic, "technologist", email="tech@north.example")
    paths = []
    for index, data in enumerate(synthetic_ct(slices=3, size=256)):
        path = tmp_path / f"slice{index}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    junk = tmp_path / "<img src=x onerror=alert(1)>.txt"
    junk.write_text("not an image " * 20)
    paths.append(str(junk))

    with browser_page() as page:
        sign_in(page, live_server.url, user, "/t/north/upload/")

        page.locator("#files").set_input_files(paths)
        page.get_by_role("button", name="Upload").click()
        page.locator("#upload-status").filter(has_text="Done").wait_for(timeout=60_000)

        assert page.locator("#upload-status").inner_text() == (
            "Done: stored 3, duplicate 0, rejected 1."
        )
        assert page.locator("#upload-progress").get_attribute("value") == "100"
        rows = page.locator("#upload-results tbody tr")
        assert rows.count() == 4
        assert rows.nth(3).locator("td").nth(0).inner_text() == "<img src=x onerror=alert(1)>.txt"
        assert "DICM" in rows.nth(3).locator("td").nth(2).inner_text()
        screenshot(page, "upload-results")

    assert Instance.objects.for_tenant(clinic).count() == 3


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.timeout(180)
def test_a_file_over_the_limit_is_refused_by_name_before_it_is_sent(
    live_server, tmp_path, settings
):
    require_chromium()
    settings.INGEST_MAX_INSTANCE_BYTES = settings.INGEST_MAX_ZIP_TOTAL_BYTES = 3 * 2**20
    clinic = make_clinic("north", "North Imaging")
    user = make_member(clinic, "technologist", email="tech@north.example")
    (small,) = synthetic_ct(slices=1, size=64)
    (tmp_path / "small.dcm").write_bytes(small)
    (tmp_path / "huge.zip").write_bytes(b"\0" * (4 * 2**20))

    with browser_page() as page:
        sign_in(page, live_server.url, user, "/t/north/upload/")

        page.locator("#files").set_input_files(
            [str(tmp_path / "huge.zip"), str(tmp_path / "small.dcm")]
        )
        page.get_by_role("button", name="Upload").click()
        page.locator("#upload-status").filter(has_text="Done").wait_for(timeout=60_000)

        assert page.locator("#upload-status").inner_text() == (
            "Done: stored 1, duplicate 0, rejected 1."
        )
        cells = page.locator("#upload-results tbody tr").nth(0).locator("td")
        assert cells.nth(0).inner_text() == "huge.zip"
        assert cells.nth(2).inner_text() == (
            "Larger than one file of an upload may be (3 MB), so it was not sent. "
            "Upload it in smaller zips, or its files themselves."
        )

    assert Instance.objects.for_tenant(clinic).count() == 1
