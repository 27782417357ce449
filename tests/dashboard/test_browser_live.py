"""``--live``: a bundle that grows is re-analysed and the view refreshes without a page reload."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_server import ServerThread
from test_browser import map_boxes, severe_console, wait_js

from bottleneck_map.bundle import BundleWriter, read_bundle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def growing(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("live") / "run"
    shutil.copytree(bundles["light"], path)
    return path


@pytest.fixture(scope="module")
def url(growing: Path) -> Iterator[str]:
    from bottleneck_map.dashboard.app import create_app

    app = create_app([growing], live=True, live_interval_ms=700)
    with ServerThread(app) as server:
        yield server.url


def _requests_shown(driver) -> int:  # noqa: ANN001
    text = driver.find_element("id", "run-summary").text
    return int(text.split("requests")[1].split()[0].replace(",", ""))


def test_growing_bundle_refreshes_in_place(driver, url, growing: Path, artifacts: Path) -> None:  # noqa: ANN001
    driver.get(url)
    map_boxes(driver)
    assert "live" in driver.find_element("id", "live-badge").text
    before = _requests_shown(driver)
    driver.execute_script("window.__notReloaded = true;")
    rows = read_bundle(growing).table("requests").slice(0, 30).to_pylist()
    with BundleWriter(growing, None) as w:
        for i, row in enumerate(rows):
            w.add_request({**row, "request_id": f"late-{i}"})
    wait_js(driver, f"return document.getElementById('run-summary').innerText.includes('{before + 30:,}')", timeout=30)
    assert _requests_shown(driver) == before + 30
    assert driver.execute_script("return window.__notReloaded === true"), "refreshed without reloading the page"
    map_boxes(driver)
    driver.save_screenshot(str(artifacts / "7-live.png"))
    assert severe_console(driver) == []
