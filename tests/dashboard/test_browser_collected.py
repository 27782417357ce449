"""A collected fleet bundle (no steps) in the browser: the timeline's engine panels have points, per instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_collected import KV, SECONDS, SLOTS, make_collected_bundle
from dashboard_server import ServerThread
from test_browser import graph_data, open_tab, severe_console, shot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from bottleneck_map.dashboard.app import create_app

    path = make_collected_bundle(tmp_path_factory.mktemp("collected-browser") / "fleet")
    with ServerThread(create_app([path])) as server:
        yield server.url


def test_collected_timeline_engine_panels_have_points_per_instance(driver, url: str, artifacts: Path) -> None:  # noqa: ANN001
    open_tab(driver, url, "timeline")
    drawn = {t["name"]: t["n"] for t in graph_data(driver, "timeline-graph")}
    for inst in (KV, SLOTS):
        for label in ("running", "waiting", "KV usage", "generation tok/s"):
            assert drawn.get(f"{label} {inst}", 0) >= SECONDS - 1, (label, inst, drawn)
    assert drawn.get(f"preemptions {KV}", 0) > 0
    note = driver.find_element("css selector", ".bm-notes").text
    assert "one line per instance" in note
    shot(driver, artifacts, "timeline-collected")
    assert severe_console(driver) == []
