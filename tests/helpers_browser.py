"""A real headless browser for the pages people look at: Debian's chromium driven through
chromium-driver (selenium), with no network.

`browser()` starts chromium with every host name unresolvable except 127.0.0.1
(`--host-resolver-rules`), records every request the page makes (the DevTools performance
log) and `offsite_requests(driver)` lists those that were not for this machine or inline
(`data:`), so a page that needs a CDN fails its test twice: it renders blank, and it is seen
asking. chromium and chromium-driver are installed with apt when missing (as root: CI and
developers' machines are); without them and without root, the tests skip saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_debian import ensure_binaries

REPO = Path(__file__).resolve().parents[1]
# screenshots go to docs/images only when asked (`make screenshots`), so a test run leaves the
# checkout as it was; otherwise into a temporary folder
IMAGES_ENV = "SEMLAYOUT_SCREENSHOT_DIR"
LOCAL_PREFIXES = ("http://127.0.0.1", "data:", "blob:", "about:", "chrome-error:", "file://")


def ensure_chromium() -> tuple[str, ...]:
    """(chromium, chromedriver) paths, installing Debian's packages when they are missing."""
    return ensure_binaries(("chromium", "chromedriver"), ("chromium", "chromium-driver"))


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1800) -> Iterator[Any]:
    """A headless chromium (selenium WebDriver) that cannot reach anything but 127.0.0.1."""
    pytest.importorskip("selenium", reason="selenium (dev extra) is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = ensure_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        # no DNS for anything but this machine: a CDN request fails as it would offline
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page sent a request for since the last call (DevTools performance log);
    requests the browser refused to send (a Content-Security-Policy) are not counted."""
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg.get("method") == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif msg.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [url for rid, url in sent.items() if rid not in blocked]


def offsite_requests(urls: list[str]) -> list[str]:
    return [u for u in urls if not u.startswith(LOCAL_PREFIXES)]


def wait_for(driver: Any, script: str, timeout: float = 30.0) -> Any:
    """Poll a JavaScript expression until it is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: d.execute_script(f"return ({script});")
    )


def screenshot(driver: Any, name: str, full_height: bool = True) -> Path:
    """<name>.png of the page (the whole page height when `full_height`) in
    $SEMLAYOUT_SCREENSHOT_DIR (`make screenshots`: docs/images) or a temporary folder."""
    import tempfile

    if full_height:
        h = driver.execute_script("return document.documentElement.scrollHeight")
        w = driver.execute_script("return window.innerWidth") or 1400
        driver.set_window_size(max(int(w), 1200), min(int(h) + 120, 6000))
    folder = Path(os.environ.get(IMAGES_ENV) or tempfile.mkdtemp(prefix="semlayout-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{name}.png"
    driver.save_screenshot(str(dest))
    assert dest.stat().st_size > 10_000, f"{dest}: an empty page?"
    return dest
