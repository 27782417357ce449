"""Figures and drill-down over a real analysis of a synthetic bundle (no browser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bottleneck_map.dashboard import drilldown, layout
from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.figures_latency import cdf_points, latency_figure
from bottleneck_map.dashboard.figures_map import map_figure, map_icicle, map_nodes
from bottleneck_map.dashboard.figures_requests import waterfall_figure
from bottleneck_map.dashboard.store import Loaded, Store


@pytest.fixture(scope="module")
def store(bundles: dict[str, Path]) -> Store:
    return Store(BundleRegistry([bundles["busy"], bundles["light"]]), slo={"ttft": 0.05})


@pytest.fixture(scope="module")
def busy(store: Store) -> Loaded:
    return store.get(store.registry.entries()[0].id)


def test_map_follows_the_flow_and_the_analyzers_shares(busy: Loaded) -> None:
    nodes = map_nodes(busy.bmap)
    groups = [n.label for n in nodes if n.parent == "root"]
    order = [g.split(". ")[1] for g in groups]
    flow = ["tokenize", "queue", "prefill", "decode", "streaming"]
    assert order == [g for g in flow if g in order], "groups appear in the order a request meets them"
    shares = {s.stage: s.share for s in busy.bmap.stages}
    queue = next(n for n in nodes if n.id.endswith("/queue"))
    assert queue.share == pytest.approx(shares["queue"])
    for g in (n for n in nodes if n.level == 1):
        assert g.share == pytest.approx(sum(n.share for n in nodes if n.parent == g.id)), "a group is its stages"


def test_the_html_map_lays_boxes_out_by_share(busy: Loaded) -> None:
    ice = map_icicle(busy.bmap)
    assert ice.id == "map-graph"
    root_box, groups_row = ice.children
    assert root_box.children[0].children == "query → response"
    nodes = {n.label: n for n in map_nodes(busy.bmap)}
    total = nodes["query → response"].share
    for col in groups_row.children:
        group_box, stages_row = col.children
        group = nodes[group_box.children[0].children]
        assert col.style["flexGrow"] == pytest.approx(group.share / total)
        grows = [cell.style["flexGrow"] for cell in stages_row.children]
        assert sum(grows) == pytest.approx(1.0)
        assert group_box.style["background"] == group.color and "of summed latency" in group_box.title


def test_compare_maps_are_the_same_boxes_as_plotly_icicles(busy: Loaded) -> None:
    fig = map_figure(busy.bmap)
    trace = fig.data[0]
    groups = [label for label, parent in zip(trace.labels, trace.parents, strict=True) if parent == "root"]
    order = [g.split(". ")[1] for g in groups]
    flow = ["tokenize", "queue", "prefill", "decode", "streaming"]
    assert order == [g for g in flow if g in order], "groups appear in the order a request meets them"
    shares = {s.stage: s.share for s in busy.bmap.stages}
    values = dict(zip(trace.ids, trace.values, strict=True))
    queue_id = next(i for i in trace.ids if i.endswith("/queue"))
    assert values[queue_id] == pytest.approx(shares["queue"] * 100)
    assert trace.sort is False


def test_requests_table_pages_sorts_and_filters_on_the_server(busy: Loaded) -> None:
    frame = drilldown.requests_table(busy)
    assert len(frame) == busy.tables.requests.num_rows
    stage_cols = [c for c in frame.columns if c.endswith("_s") and c not in ("ttft_s", "tpot_s", "e2e_s", "arrival_s")]
    ok = frame[frame["ok"]]
    assert np.allclose(ok[stage_cols].sum(axis=1), ok["e2e_s"], rtol=0.01), "the analyzer's stages add up to E2E"
    first = drilldown.page(
        frame,
        {"startRow": 0, "endRow": 50, "sortModel": [{"colId": "e2e_s", "sort": "desc"}]},
        drilldown.REQUEST_COLUMNS,
    )
    assert len(first["rowData"]) == 50 and first["rowCount"] == len(frame)
    e2e = [r["e2e_s"] for r in first["rowData"]]
    assert e2e == sorted(e2e, reverse=True) and e2e[0] == pytest.approx(frame["e2e_s"].max(), abs=1e-6)
    rag = drilldown.page(
        frame,
        {
            "startRow": 0,
            "endRow": 1000,
            "filterModel": {
                "workload_class": {"filterType": "text", "type": "equals", "filter": "rag"},
                "prompt_tokens": {"filterType": "number", "type": "greaterThan", "filter": 500},
            },
        },
        drilldown.REQUEST_COLUMNS,
    )
    expect = frame[(frame["workload_class"] == "rag") & (frame["prompt_tokens"] > 500)]
    assert rag["rowCount"] == len(expect) > 0
    assert {r["request_id"] for r in rag["rowData"]} == set(expect["request_id"])
    either = drilldown.apply_filter(
        frame,
        {
            "workload_class": {
                "filterType": "text",
                "operator": "OR",
                "conditions": [{"type": "equals", "filter": "rag"}, {"type": "equals", "filter": "agentic"}],
            }
        },
    )
    assert set(either["workload_class"]) == {"rag", "agentic"}
    assert drilldown.apply_filter(frame, {"no_such_column": {"type": "equals", "filter": "x"}}).equals(frame)


def test_request_timeline_joins_lifecycle_and_steps(busy: Loaded) -> None:
    frame = drilldown.requests_table(busy)
    rid = frame.loc[frame["preemptions"].idxmax(), "request_id"]
    tl = drilldown.request_timeline(busy, rid)
    assert tl is not None and tl.request_id == rid
    stages = list(tl.intervals["stage"])
    assert stages[:3] == ["receive", "tokenize", "queue"] and "decode" in stages and "preempted" in stages
    steps = busy.tables.steps.to_pandas()
    member = steps[steps["request_ids"].apply(lambda ids: rid in list(ids))]
    assert len(tl.steps) == len(member), "every step that carried the request, no other"
    assert (
        tl.steps["is_prefill"].any()
        and (~tl.steps["is_prefill"]).sum() >= frame.loc[frame["request_id"] == rid, "output_tokens"].iloc[0] - 1
    )
    fig = waterfall_figure(tl)
    names = [t.name for t in fig.data]
    assert "queue" in names and any(n.startswith("decode steps") for n in names)
    assert drilldown.request_timeline(busy, "no-such-request") is None


def test_timeline_plots_the_analyzers_window_stage_shares(busy: Loaded) -> None:
    from bottleneck_map.dashboard.views_timeline import timeline_figure_for

    fig = timeline_figure_for(busy)
    windows = busy.bmap.windows
    stacked = {t.name: list(t.y) for t in fig.data if t.legendgroup == "stages"}
    assert stacked, "the stage-share panel is drawn"
    for group, ys in stacked.items():
        expect = [100 * w.stage_share[group] for w in windows]
        assert ys == pytest.approx(expect + expect[-1:]), group
    queue = next(t for t in fig.data if t.legendgroup == "stages" and t.name == "queue")
    assert "stage time" in queue.hovertemplate
    verdicts = [t for t in fig.data if t.legendgroup == "verdicts"]
    shown = {int(i): share for t in verdicts for _, i, share in t.customdata}
    for w in windows:
        top = max((v for c, v in w.class_share.items() if c != "unattributed"), default=0.0)
        assert shown[w.index] == pytest.approx(100 * top)


def test_cdf_points_are_bounded_and_monotone() -> None:
    x, p = cdf_points(np.random.default_rng(0).exponential(size=100_000))
    assert len(x) == 300 and np.all(np.diff(x) >= 0) and p[0] == 0 and p[-1] == 1
    x, p = cdf_points(np.array([3.0, np.nan, 1.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 3.0] and p.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_a_long_tail_does_not_squash_the_cdf_against_its_left_edge() -> None:
    """995 gaps of 10-30 ms and five of 3 s (preemptions): the ITL axis spans the body, up to twice
    the p99, and the title says the maximum lies off the axis."""
    import pandas as pd

    rng = np.random.default_rng(1)
    gaps = np.concatenate([rng.uniform(0.010, 0.030, 995), np.full(5, 3.0)])
    itl = pd.DataFrame({"workload_class": "default", "itl_s": gaps})
    reqs = pd.DataFrame({"workload_class": "default", "ok": True, "ttft_s": [0.1, 0.2], "tpot_s": 0.02, "e2e_s": 1.0})
    fig = latency_figure(reqs, itl, {"ttft": 0.5}, [])
    lo, hi = fig.layout.xaxis3.range  # ITL: row 2, col 1
    assert 10**lo <= 10.0 and 10**hi == pytest.approx(2 * np.percentile(gaps * 1e3, 99) * 1.15, rel=1e-6)
    assert 10**hi < 100  # not stretched to 3,000 ms
    assert "max 3.00 s (off the axis)" in fig.layout.annotations[2].text
    # an SLO line beyond the body stays on the axis
    assert 10 ** fig.layout.xaxis.range[1] >= 500


@pytest.mark.parametrize("tab", [t for t, _ in layout.TABS])
def test_every_view_renders_for_a_bundle_without_samples_or_steps(
    tab: str, busy: Loaded, store: Store, tmp_path_factory
) -> None:  # noqa: ANN001
    """An ingested bundle has requests only: each view says what it lacks instead of failing."""
    import shutil

    from bottleneck_map.bundle import BundleWriter, read_bundle

    root = tmp_path_factory.mktemp("reqonly")
    path = root / "b"
    meta = dict(read_bundle(busy.entry.path).meta)
    meta["capabilities"] = {"steps": False, "samples": False, "streaming": True}
    with BundleWriter(path, meta) as w:
        for row in busy.tables.requests.slice(0, 50).to_pylist():
            w.add_request(row)
    shutil.rmtree(path / "steps")
    s = Store(BundleRegistry([path]))
    loaded = s.get(s.registry.default.id)
    view = layout.view(tab, loaded, s)
    text = str(view.to_plotly_json())
    if tab == "timeline":
        assert "no engine steps" in text and "Not in this bundle" in text
    if tab == "roofline":
        assert "no engine steps" in text


def test_verdict_panel_says_when_the_top_verdict_is_not_confident(busy: Loaded) -> None:
    import copy

    from bottleneck_map.dashboard.views_map import verdict_panel

    m = copy.deepcopy(busy.bmap)
    assert "top verdict" in str(verdict_panel(m)) and "no confident verdict" not in str(verdict_panel(m))
    m.top.confidence = 0.1
    assert "no confident verdict; strongest candidate" in str(verdict_panel(m))


def test_roofline_axes_use_si_prefixes(busy: Loaded) -> None:
    from bottleneck_map.dashboard.figures_roofline import roofline_figure

    fig = roofline_figure(drilldown.step_roofline(busy), busy.bmap.device, busy.bmap.roofline)
    assert fig.layout.xaxis.exponentformat == "SI" and fig.layout.yaxis.exponentformat == "SI"  # 100G, not 100B


def test_count_axes_tick_whole_numbers(busy: Loaded) -> None:
    from bottleneck_map.dashboard.figures_timeline import count_axis
    from bottleneck_map.dashboard.views_timeline import timeline_figure_for

    assert count_axis(0)["dtick"] == 1 and count_axis(2)["dtick"] == 1 and count_axis(41)["dtick"] == 11
    assert count_axis(float("nan"))["dtick"] == 1 and count_axis(3)["tickformat"] == ",d"
    fig = timeline_figure_for(busy)
    axes = [a for k, a in fig.layout.to_plotly_json().items() if k.startswith("yaxis")]
    preempted = [a for a in axes if a.get("title", {}).get("text") == "preempted"]
    assert preempted and all(a["dtick"] >= 1 and a["tick0"] == 0 for a in preempted)


def test_compare_legend_sits_above_the_subplot_titles(store: Store) -> None:
    from bottleneck_map.dashboard.figures_compare import compare_figure

    a, b = (store.get(e.id).bmap for e in store.registry.entries()[:2])
    fig = compare_figure(a, b)
    title_top = max(ann.y for ann in fig.layout.annotations)
    assert fig.layout.legend.yanchor == "bottom" and fig.layout.legend.y > title_top
