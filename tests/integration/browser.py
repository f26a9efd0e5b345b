"""Headless Chromium on a ComfyUI page, shared by the browser tests, ``live_page.py`` and the benchmarks
(Playwright driving Debian ``chromium``; ``playwright install`` is never needed).

    skip_unless_available()            # in a fixture: skips with the reason when Playwright or chromium is missing
    with open_page(url, width=1280, height=800) as page:
        ...
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a fake camera, no prompt
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding"]


def skip_unless_available() -> None:
    """Skip the calling test (with the reason) when Playwright or Debian chromium is missing."""
    import pytest

    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium (apt-get install chromium)")


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1400, height: int = 1000, chromium: str = CHROMIUM):
    """A headless Chromium page on ComfyUI at ``url``, once the app is ready."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
            yield page
        finally:
            browser.close()
