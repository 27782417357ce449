"""The dashboard in a real headless Chromium: every view renders with data, no console errors.

One app and one browser for the module; a screenshot of each view goes to
test-artifacts/dashboard/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_server import ServerThread

pytestmark = pytest.mark.browser

SLO = {"ttft": 0.05, "tpot": 0.01, "e2e": 0.5}


@pytest.fixture(scope="module")
def url(bundles: dict[str, Path]) -> Iterator[str]:
    from bottleneck_map.dashboard.app import create_app

    app = create_app([bundles["busy"], bundles["light"]], slo=SLO)
    with ServerThread(app) as server:
        yield server.url


def wait_js(driver, script: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
    """Poll a JS expression until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = driver.execute_script(script)
        except Exception as exc:  # element not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script} (last: {last!r})")


def graph_data(driver, graph_id: str):  # noqa: ANN001, ANN201
    """The traces plotly actually drew in a dcc.Graph: [{type, name, n}] once it has data."""
    return wait_js(
        driver,
        f"""const gd = document.querySelector('#{graph_id} .js-plotly-plot');
        if (!gd || !gd._fullData || !gd._fullData.length) return null;
        return gd._fullData.map(t => ({{type: t.type, name: t.name,
            n: (t.x && t.x.length) || (t.labels && t.labels.length) || (t.y && t.y.length) || 0}}));""",
    )


def map_boxes(driver):  # noqa: ANN001, ANN201
    """The boxes of the map as the browser laid them out: [{label, share, level, width}] once drawn."""
    return wait_js(
        driver,
        """const boxes = Array.from(document.querySelectorAll('#map-graph .bm-ice-node'));
        if (!boxes.length) return null;
        return boxes.map(b => ({label: b.dataset.label, share: parseFloat(b.dataset.share),
            level: parseInt(b.dataset.level), width: b.getBoundingClientRect().width}));""",
    )


def open_tab(driver, url: str, tab: str) -> None:  # noqa: ANN001
    if not driver.current_url.startswith(url):
        driver.get(url)
    wait_js(driver, f"return document.getElementById('tab-{tab}')").click()


def shot(driver, artifacts: Path, name: str) -> None:  # noqa: ANN001
    time.sleep(0.4)  # let plotly finish its transitions
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1500, min(max(height + 40, 900), 4000))
    driver.save_screenshot(str(artifacts / f"{name}.png"))
    driver.set_window_size(1500, 1100)


def severe_console(driver) -> list[str]:  # noqa: ANN001
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_map_shows_stages_and_top_verdict(driver, url, artifacts) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    driver.get(url)
    boxes = map_boxes(driver)
    elapsed = time.monotonic() - t0
    labels = [b["label"] for b in boxes]
    assert labels[0].startswith("query")
    assert any("queue" in x for x in labels) and any("decode" in x for x in labels)
    assert len(labels) >= 6, labels
    # laid out by share: the root spans the map, and a group's width follows its share of the root's
    root, groups = boxes[0], [b for b in boxes if b["level"] == 1]
    widest = max(groups, key=lambda b: b["share"])
    assert widest["width"] == pytest.approx(root["width"] * widest["share"] / root["share"], rel=0.1, abs=8)
    assert not driver.execute_script("return !!window.Plotly && !!document.querySelector('.js-plotly-plot')"), (
        "the map view draws no plotly figure"
    )
    verdict = driver.find_element("id", "top-verdict").text
    assert verdict, "the top verdict is shown beside the map"
    assert driver.find_elements("css selector", "#stage-table tbody tr"), "stage table has rows"
    assert elapsed < 10, f"first view took {elapsed:.1f} s"
    shot(driver, artifacts, "1-map")
    assert severe_console(driver) == []


def test_timeline_shares_one_axis_and_zooms_together(driver, url, artifacts) -> None:  # noqa: ANN001
    open_tab(driver, url, "timeline")
    traces = graph_data(driver, "timeline-graph")
    names = {t["name"] for t in traces if t["n"] > 0}
    assert {"batch size", "waiting", "KV usage", "queue"} <= names, names
    assert any(n.startswith("DRAM bandwidth") for n in names)
    assert any(t["type"] == "scattergl" and t["n"] > 100 for t in traces)
    # zooming one panel zooms all: every x axis matches the first, and a relayout moves them together
    driver.execute_script(
        "const gd = document.querySelector('#timeline-graph .js-plotly-plot');"
        "Plotly.relayout(gd, {'xaxis3.range': [1.0, 2.0]});"
    )
    ranges = wait_js(
        driver,
        """const gd = document.querySelector('#timeline-graph .js-plotly-plot');
        const axes = Object.keys(gd._fullLayout).filter(k => /^xaxis\\d*$/.test(k));
        const r = axes.map(k => gd._fullLayout[k].range.map(v => Math.round(v * 100) / 100));
        return r.every(x => x[0] === 1 && x[1] === 2) ? r : null;""",
    )
    assert len(ranges) >= 6
    # the server re-aggregates the dense series for the range shown
    wait_js(
        driver,
        """const gd = document.querySelector('#timeline-graph .js-plotly-plot');
        const t = gd._fullData.find(t => t.name === 'batch size');
        return t && t._length > 10 && Array.from(t.x).every(x => x >= 0.999 && x <= 2.001);""",
    )
    driver.execute_script("document.querySelector('#timeline-graph .js-plotly-plot').scrollIntoView()")
    shot(driver, artifacts, "2-timeline")
    assert severe_console(driver) == []


def test_latency_cdfs_with_slo_lines(driver, url, artifacts) -> None:  # noqa: ANN001
    open_tab(driver, url, "latency")
    traces = graph_data(driver, "latency-graph")
    assert {t["name"] for t in traces} >= {"all", "chat", "rag"}
    assert all(t["n"] > 1 for t in traces)
    slo_lines = sorted(t["name"] for t in traces if t["name"].startswith("SLO"))
    assert slo_lines == ["SLO E2E", "SLO TPOT", "SLO TTFT"], "one SLO line each for TTFT, TPOT and E2E"
    x_range = driver.execute_script(
        "return document.querySelector('#latency-graph .js-plotly-plot')._fullLayout.xaxis.range"
    )
    assert -1 < x_range[0] < x_range[1] < 6, f"TTFT axis spans the data (log10 ms), not {x_range}"
    assert "goodput" in driver.find_element("id", "goodput-table").text
    shot(driver, artifacts, "3-latency")
    assert severe_console(driver) == []


def test_request_explorer_selects_a_request_and_shows_its_waterfall(driver, url, artifacts) -> None:  # noqa: ANN001
    open_tab(driver, url, "requests")
    first = wait_js(
        driver, "const r = document.querySelector('#req-grid .ag-row .ag-cell'); return r && r.textContent ? r : null"
    )
    count = driver.execute_script(
        "return document.querySelectorAll('#req-grid .ag-center-cols-container .ag-row').length"
    )
    assert count >= 10
    rid = first.text
    assert rid.startswith("req-")
    first.click()
    traces = graph_data(driver, "waterfall-graph")
    names = [t["name"] for t in traces]
    assert "queue" in names and any(n.startswith("decode steps") for n in names)
    steps = next(t for t in traces if t["name"].startswith("decode steps"))
    assert steps["n"] >= 1
    title = driver.execute_script(
        "return document.querySelector('#waterfall-graph .js-plotly-plot')._fullLayout.title.text"
    )
    assert rid in title
    shot(driver, artifacts, "4-requests")
    assert severe_console(driver) == []


def test_the_explorer_opened_before_the_first_figure_waits_for_its_grid_library(driver, url) -> None:  # noqa: ANN001
    driver.get("about:blank")
    driver.get(url)
    # click as soon as the tab exists: the grid library is not in the page, nothing has loaded it yet
    wait_js(driver, "return document.getElementById('tab-requests')").click()
    wait_js(driver, "return document.querySelector('#req-grid .ag-row .ag-cell')")
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.name).filter(n => n.includes('/dash_ag_grid/dash_ag_grid.'))"
    )
    assert len(fetched) == 1, fetched
    plotly = driver.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.name).filter(n => n.endsWith('plotly.min.js'))"
    )
    assert len(plotly) <= 1, f"preloaded plotly.js fetched again: {plotly}"
    assert severe_console(driver) == []


def test_roofline_points_by_phase(driver, url, artifacts) -> None:  # noqa: ANN001
    open_tab(driver, url, "roofline")
    traces = graph_data(driver, "roofline-graph")
    by_name = {t["name"]: t for t in traces}
    assert any(n.startswith("decode steps") and t["n"] > 10 for n, t in by_name.items())
    assert any(n.startswith("prefill steps") or n.startswith("mixed steps") for n in by_name)
    assert any(n.startswith("roof:") for n in by_name)
    shot(driver, artifacts, "5-roofline")
    assert severe_console(driver) == []


def test_compare_two_bundles_with_the_analyzers_diff(driver, url, artifacts) -> None:  # noqa: ANN001
    open_tab(driver, url, "compare")
    traces = graph_data(driver, "compare-graph")
    assert len(traces) == 4 and all(t["n"] > 0 for t in traces)
    diff = wait_js(driver, "const d = document.getElementById('diff-table'); return d && d.innerText")
    assert "Top verdict" in diff and ("better" in diff or "worse" in diff)
    shot(driver, artifacts, "6-compare")
    assert severe_console(driver) == []


def test_switching_bundle_in_the_picker_redraws_the_view(driver, url, artifacts) -> None:  # noqa: ANN001
    driver.get(url)
    map_boxes(driver)
    before = driver.find_element("id", "top-verdict").text
    summary = driver.find_element("id", "run-summary").text
    driver.find_element("css selector", "#bundle").click()
    option = wait_js(
        driver,
        """return Array.from(document.querySelectorAll('[role=option], .dash-dropdown-option, .Select-option'))
            .find(o => o.textContent.includes('light')) || null;""",
    )
    option.click()
    wait_js(driver, f"return document.getElementById('run-summary').innerText !== {summary!r}")
    after = wait_js(driver, "const v = document.getElementById('top-verdict'); return v && v.innerText")
    assert after != before, "the light run has another verdict than the overloaded one"
    map_boxes(driver)
    assert severe_console(driver) == []
