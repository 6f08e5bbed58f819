"""The gallery in a real browser: headless Chromium from the distribution's packages,
driven by Playwright pointed at it (`make browser` installs both; Playwright's own browser
download is never used). Skipped, saying why, where either is missing.

Also takes the README's screenshot (docs/gallery.png)."""

from __future__ import annotations

import os
import shutil

import pytest
import trio

from tests.fixtures.listener import rows, wait_until
from tests.helpers import REPO
from tests.web_fixtures import http_url

SCREENSHOT = REPO / "docs" / "gallery.png"
PROMPTS = [
    "a red fox in the snow, morning light",
    "lighthouse on a cliff at dusk",
    "a bowl of ramen, studio photo",
    "an old tram in Lisbon",
    "a cat astronaut, watercolour",
]


def chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture
def browser_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("no Playwright: `make browser` installs it (pip extra 'browser')")
    path = chromium()
    if path is None:
        pytest.skip("no Chromium: `make browser` installs the distribution's (apt, as root)")
    return path


def drive(browser_path: str, url: str, database_url: str, failed_id: int) -> dict:
    """The user's steps, blocking (Playwright's sync API, in a worker thread)."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_path,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(url)
            expect(page.locator("#live")).to_have_class("live on", timeout=15_000)
            page.evaluate("window.notReloaded = true")

            # a row inserted with SQL appears, with its thumbnail, without a reload
            (new_id,) = rows(
                database_url,
                "INSERT INTO images (prompt) VALUES ('a hot-air balloon over vineyards') "
                "RETURNING id",
            )[0]
            card = page.locator(f"#row-{new_id}")
            expect(card).to_be_visible(timeout=20_000)
            thumb = card.locator("img")
            expect(thumb).to_be_visible(timeout=30_000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
            )
            seen["not_reloaded"] = page.evaluate("window.notReloaded === true")
            expect(card.locator(".badge")).to_have_text("ready")

            # the full image on click
            card.locator("a.pic").click()
            full = page.locator("#viewer #full")
            expect(full).to_be_visible()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=full.element_handle()
            )
            seen["full_size"] = page.evaluate(
                "[document.getElementById('full').naturalWidth, "
                "document.getElementById('full').naturalHeight]"
            )
            page.keyboard.press("Escape")
            expect(full).to_be_hidden()

            # retry a failed row from the page
            failed = page.locator(f"#row-{failed_id}")
            expect(failed.locator(".error")).to_be_visible()
            failed.locator("button.retry").click()
            expect(page.locator(".flash")).to_have_text("Sent back to the queue.")
            expect(page.locator(f"#row-{failed_id} .badge")).to_have_text("ready", timeout=30_000)
            page.wait_for_function(
                "id => { const i = document.querySelector('#row-' + id + ' img');"
                " return i && i.complete && i.naturalWidth > 0 }",
                arg=failed_id,
            )
            for img in page.locator(".card img").all():
                page.wait_for_function("img => img.complete", arg=img.element_handle())
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            seen["screenshot"] = SCREENSHOT.stat().st_size

            # and on a phone: one or two columns, nothing wider than the screen
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(url)
            seen["phone_overflow"] = phone.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            )
        finally:
            browser.close()
    return seen


async def test_the_gallery_in_a_real_browser(
    browser_path, start_listener, emulator, database_url, listener_env
):
    emulator.fault("run", "fail", count=1)
    env = {**listener_env, "DEFAULT_IMAGE_WIDTH": "256", "DEFAULT_IMAGE_HEIGHT": "256"}
    p = await start_listener("--http", "127.0.0.1:0", env=env)
    url = await http_url(p)
    (failed_id,) = rows(
        database_url, "INSERT INTO images (prompt) VALUES ('a storm at sea') RETURNING id"
    )[0]
    await wait_until(
        lambda: (
            rows(database_url, "SELECT status FROM images WHERE id = %s", (failed_id,))
            == [("Failed",)]
        ),
        what="the row the emulator fails",
    )
    for prompt in PROMPTS:
        rows(database_url, "INSERT INTO images (prompt) VALUES (%s)", (prompt,))
        await trio.sleep(0.05)
    await wait_until(
        lambda: (
            rows(database_url, "SELECT count(*) FROM images WHERE status = 'ReadyToPublish'")[0][0]
            == len(PROMPTS)
        ),
        what="the first images",
    )
    seen = await trio.to_thread.run_sync(drive, browser_path, url, database_url, failed_id)
    assert seen["not_reloaded"] is True
    assert seen["full_size"] == [256, 256]
    assert seen["screenshot"] > 10_000
    assert seen["phone_overflow"] <= 0
    assert rows(database_url, "SELECT status FROM images WHERE id = %s", (failed_id,)) == [
        ("ReadyToPublish",)
    ]
