"""/docs and /redoc work offline: the assets are shipped in the package (vendored from their
npm packages, checksummed) and a real headless browser with no network renders both pages
and finds the API's operations in them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from helpers_browser import browser, offsite_requests, requested_urls, screenshot, wait_for
from helpers_serving import make_checkpoint, running_server

from semlayout.serving.routes.docs_routes import ASSETS, shipped_assets


def test_the_shipped_assets_are_the_npm_packages_files() -> None:
    sources = json.loads((ASSETS / "SOURCES.json").read_text())
    assert {s.split("@")[0] for s in sources} == {"swagger-ui-dist", "redoc"}
    for spec, info in sources.items():
        assert info["integrity"].startswith("sha512-"), spec
        for name, digest in info["files"].items():
            assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= shipped_assets()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from semlayout.serving.app import create_app
    from semlayout.serving.settings import ServeSettings

    tmp = tmp_path_factory.mktemp("docs")
    ckpt = make_checkpoint(tmp / "ckpt")
    settings = ServeSettings(
        model=str(ckpt), monitor_db=tmp / "monitor.db", feedback_dir=tmp / "fb", poll_interval_s=0
    )
    with running_server(create_app(settings)) as url:
        yield url


def test_pages_name_only_local_assets(server: str) -> None:
    for page in ("/docs", "/redoc"):
        r = httpx.get(server + page)
        assert r.status_code == 200
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text, page
        assert "/docs/assets/" in r.text
    assert httpx.get(server + "/docs/assets/swagger-ui-bundle.js").status_code == 200
    # only the listed files: no path tricks into the package
    for bad in ("SOURCES.json", "..%2Fapp.py", "app.py"):
        assert httpx.get(server + "/docs/assets/" + bad).status_code == 404, bad
    paths = set(httpx.get(server + "/openapi.json").json()["paths"])
    assert "/docs" not in paths and "/v1/translate/{direction}" in paths


def _operations(server: str) -> set[str]:
    spec = httpx.get(server + "/openapi.json").json()
    return {p for p, ops in spec["paths"].items() if ops}


def test_swagger_ui_renders_every_operation_with_no_network(server: str) -> None:
    expected = _operations(server)
    with browser() as driver:
        driver.get(server + "/docs")
        n = wait_for(driver, "document.querySelectorAll('.opblock').length")
        shown = set(
            driver.execute_script(
                "return [...document.querySelectorAll('.opblock-summary-path')]"
                ".map(e => e.getAttribute('data-path'))"
            )
        )
        urls = requested_urls(driver)
        screenshot(driver, "api_docs", full_height=False)
    assert n >= len(expected) and expected <= shown, expected - shown
    assert not offsite_requests(urls), offsite_requests(urls)


def test_redoc_renders_the_operations_with_no_network(server: str) -> None:
    with browser() as driver:
        driver.get(server + "/redoc")
        wait_for(driver, "document.body.innerText.includes('/v1/translate/{direction}')", 60)
        text = driver.execute_script("return document.body.innerText")
        urls = requested_urls(driver)
    assert "semlayout" in text and "/v1/feedback" in text
    assert not offsite_requests(urls), offsite_requests(urls)


def test_the_wheel_lists_the_assets() -> None:
    # packaging: the package data rule covers every shipped file (the wheel test builds it)
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"semlayout.serving" = ["docs_assets/*"]' in text
