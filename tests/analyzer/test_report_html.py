"""The offline HTML report: small (plotly.js's basic bundle, inlined once), in the dashboard's colours."""

from __future__ import annotations

import json
import re

import plotly
import pytest

from bottleneck_map.analyzer.api import analyze_full
from bottleneck_map.analyzer.report_html import (
    PLOTLY_BASIC_TRACES,
    plotly_basic_js,
    render_html,
    roofline_figure,
    stage_figure,
    timeline_figure,
)
from bottleneck_map.palette import CLASS_COLORS


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    from analyzer_synth import Sim, simulate

    path = simulate(Sim(max_num_seqs=2, rate_per_s=60, n_requests=40), tmp_path_factory.mktemp("b") / "b")
    return analyze_full(path)


def test_the_basic_bundle_is_the_version_plotly_py_ships():
    head = plotly_basic_js()[:200]
    assert "basic" in head
    with open(plotly.__path__[0] + "/package_data/plotly.min.js", encoding="utf-8") as f:
        version = re.search(r"plotly\.js v(\S+)", f.read(200)).group(1)
    assert f"v{version}" in head
    assert "</script" not in plotly_basic_js()  # safe to inline


def test_report_is_small_offline_and_draws_only_basic_traces(analysis):
    page = render_html(analysis.result, per_step=analysis.roofline)
    assert page.count("plotly.js (basic - minified)") == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing to fetch: opens offline
    assert len(page.encode()) < 2_000_000  # the full library alone is 4.8 MB
    assert page.count("Plotly.newPlot") == 3
    m = analysis.result
    for fig in (stage_figure(m), timeline_figure(m), roofline_figure(m, analysis.roofline)):
        assert {t.type for t in fig.data} <= PLOTLY_BASIC_TRACES


def test_report_uses_the_dashboards_class_colours(analysis):
    m = analysis.result
    stage_colors = {t.marker.color for t in stage_figure(m).data}
    assert stage_colors <= set(CLASS_COLORS.values()) | {"#D5D8DC"}
    lines = json.loads(timeline_figure(m).to_json())["data"]
    for t in lines:
        if t.get("name") in CLASS_COLORS:
            assert t["line"]["color"] == CLASS_COLORS[t["name"]]
