"""The shipped sample opens by default (no bundle named, no run yet) and every view draws."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_server import ServerThread
from test_browser import graph_data, map_boxes, open_tab, severe_console, shot

from bottleneck_map.dashboard.bundles import resolve_default

pytestmark = [pytest.mark.browser, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (REPO / "sample_traces" / "default" / "meta.json").exists():
        pytest.skip("no shipped sample under sample_traces/default yet")
    from bottleneck_map.dashboard.app import create_app

    empty = tmp_path_factory.mktemp("newcomer")  # no ./bmap-runs/ here: the sample is the default
    registry = resolve_default([], cwd=empty)
    assert registry.default.origin == "sample" and registry.default.path.name == "default"
    with ServerThread(create_app(registry)) as server:
        yield server.url


def test_sample_views_draw(driver, url: str, artifacts: Path) -> None:  # noqa: ANN001
    driver.get(url)
    assert len(map_boxes(driver)) >= 4
    shot(driver, artifacts, "sample-map")
    for tab, graph in (
        ("timeline", "timeline-graph"),
        ("latency", "latency-graph"),
        ("roofline", "roofline-graph"),
    ):
        open_tab(driver, url, tab)
        traces = graph_data(driver, graph)
        assert any(t["n"] > 0 for t in traces), tab
        shot(driver, artifacts, f"sample-{tab}")
    assert severe_console(driver) == []
