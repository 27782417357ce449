"""Dashboard fixtures: synthetic bundles, a running app on a loopback port, headless Chromium."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard_server import ServerThread, free_port  # noqa: E402, F401  (kept importable from here)
from dashboard_synth import make_bundle  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL (Scattergl) through the software rasterizer, since there is no GPU in CI.
    "--enable-unsafe-swiftshader",
    "--window-size=1500,1100",
]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of the same synthetic server: one overloaded (KV blocks short), one lightly loaded."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "busy": make_bundle(root / "busy", n_requests=240, rate=120, num_kv_blocks=300, seed=1),
        "light": make_bundle(root / "light", n_requests=120, rate=25, num_kv_blocks=2000, seed=2),
    }


def chrome(download_dir: Path | None = None):  # noqa: ANN201
    """A headless Chromium driven by the system chromedriver, with the browser console log enabled."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="bmap-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    quit_browser = d.quit

    def quit_and_clean() -> None:  # the profile (about 10 MB) goes with the browser
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    d.quit = quit_and_clean
    return d


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    d = chrome()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
