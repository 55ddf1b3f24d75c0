"""Headless Debian Chromium driven by Playwright, with no browser download."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import PASSWORD, current_totp, require_service, totp_device_for

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # The machine has no internet; without these Chromium keeps dialling out.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The test server speaks plain HTTP on loopback; keep Chromium from upgrading it.
    "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,HttpsFirstModeV2",
]


# In a share recipient's open viewer: the status of its next metadata request.
SHARE_METADATA_STATUS = """() => {
  const v = document.getElementById("viewer").dataset;
  return fetch(`/s/dicomweb/studies/${v.studyUid}/series/${v.series}/metadata`)
    .then((r) => r.status);
}"""


def require_chromium() -> None:
    require_service(
        "Chromium",
        Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
        "install Debian's chromium package (apt-get install chromium)",
    )


@contextmanager
def browser_page(*, width: int = 1280, height: int = 900) -> Iterator[object]:
    require_chromium()
    from django.db import connections
    from playwright.sync_api import sync_playwright

    # Playwright runs an event loop in this thread; the test's own ORM calls are
    # synchronous and happen between browser steps, never concurrently with them.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
            # ORM calls inside this block get a connection of their own (Django keys
            # connections by async context, which Playwright's loop changes); close it,
            # or PostgreSQL refuses to drop the test database at the end of the run.
            connections.close_all()


def screenshot(page: object, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def sign_in(page: object, base: str, user: object, next_url: str) -> None:
    """Sign `user` in through the real pages (password, then TOTP) and land on `next_url`."""
    device = totp_device_for(user)
    page.goto(f"{base}/accounts/login/?next={next_url}")
    page.get_by_label("Email address").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/accounts/verify/**")
    page.get_by_label("Code").fill(current_totp(device))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(f"**{next_url}")
