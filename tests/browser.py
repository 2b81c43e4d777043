"""Debian's Chromium, headless, driven by Playwright: what the browser tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling out to hosts this
# machine cannot reach.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (make test installs it)"
)


@contextmanager
def browser_page(base_url: str, *, width: int, height: int) -> Iterator[Any]:
    """A page in a fresh Chromium profile, with ``page.base_url`` set to the live server."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=FLAGS, headless=True, viewport={"width": width, "height": height}
        )
        page = context.new_page()
        page.base_url = base_url
        try:
            yield page
        finally:
            context.close()
