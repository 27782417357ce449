"""The page: header with the bundle picker, one tab per view, and each view's content."""

from __future__ import annotations

from typing import Any

import dash_ag_grid as dag
from dash import dcc, html

from bottleneck_map.dashboard import drilldown, series
from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.figures_compare import compare_figure
from bottleneck_map.dashboard.figures_latency import goodput_rows, latency_figure
from bottleneck_map.dashboard.figures_map import group_class, map_figure, stage_rows
from bottleneck_map.dashboard.figures_roofline import roofline_figure
from bottleneck_map.dashboard.figures_timeline import timeline_figure
from bottleneck_map.dashboard.store import Loaded, Store
from bottleneck_map.dashboard.style import CLASS_NAMES, class_color, class_name, fmt_pct, fmt_s, fmt_si, stage_name

TABS = [
    ("map", "The map"),
    ("timeline", "Timeline"),
    ("latency", "Latency distributions"),
    ("requests", "Request explorer"),
    ("roofline", "Roofline"),
    ("compare", "Compare"),
]
GRAPH_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"scale": 2}}
LIVE_INTERVAL_MS = 3000


def page(registry: BundleRegistry, store: Store, live: bool, interval_ms: int = LIVE_INTERVAL_MS) -> html.Div:
    """The whole page; the first view (the map of the default bundle) is rendered in place so it
    shows without waiting for a callback."""
    default = registry.default
    bid = default.id if default else None
    loaded = store.get(bid)
    return html.Div(
        className="bm-page",
        children=[
            html.Header(
                className="bm-header",
                children=[
                    html.Div(
                        className="bm-brand",
                        children=[
                            html.Span("bottleneck-map", className="bm-logo"),
                            html.Span("which constraint holds latency back", className="bm-tagline"),
                        ],
                    ),
                    dcc.Dropdown(
                        id="bundle",
                        options=registry.options(),
                        value=default.id if default else None,
                        clearable=False,
                        searchable=False,
                        className="bm-bundle-picker",
                    ),
                    html.Span("live", id="live-badge", className="bm-live" if live else "bm-hidden"),
                ],
            ),
            html.Div(id="run-summary", className="bm-summary", children=run_summary(loaded)),
            dcc.Tabs(
                id="tabs",
                value="map",
                className="bm-tabs",
                children=[dcc.Tab(label=label, value=value, id=f"tab-{value}") for value, label in TABS],
            ),
            dcc.Loading(
                type="dot",
                delay_show=300,
                target_components={"tab-content": "children"},
                children=html.Div(
                    id="tab-content", className="bm-content", children=view("map", loaded, store, bid=bid)
                ),
            ),
            dcc.Interval(id="live-tick", interval=interval_ms, disabled=not live),
            dcc.Store(id="bundle-sig", data=None if loaded is None else repr(loaded.signature)),
            dcc.Store(id="compare-store"),
        ],
    )


def run_summary(loaded: Loaded | None) -> list[Any]:
    if loaded is None:
        return [html.Span("No bundle to show.")]
    m = loaded.bmap
    meta = loaded.bundle.meta
    lat = m.latency_for("all")
    caps = m.capabilities or {}
    parts = [
        ("model", m.model or (meta.get("model") or {}).get("name") or "–"),
        ("device", f"{m.device.name} ({m.device.kind})"),
        ("producer", m.producer or "–"),
        ("duration", fmt_s(m.duration_s)),
        ("requests", f"{lat.completed:,}" if lat else "–"),
        ("window", fmt_s(m.window_s)),
    ]
    missing = [k for k in ("steps", "samples", "streaming") if not caps.get(k, True)]
    items: list[Any] = [html.Span([html.B(k + " "), str(v)], className="bm-kv") for k, v in parts]
    if missing:
        items.append(html.Span(f"bundle lacks: {', '.join(missing)}", className="bm-kv bm-warn"))
    if not loaded.bundle.closed:
        items.append(html.Span("still being written", className="bm-kv bm-warn"))
    return items


def view(tab: str, loaded: Loaded | None, store: Store, compare_id: str | None = None, bid: Any = None) -> Any:
    if loaded is None:
        why = store.error(bid)
        if why is None:
            return html.Div("This bundle is not available.", className="bm-empty")
        more = " Waiting for the run to write more; this view refreshes by itself." if store.live else ""
        return html.Div(f"This bundle cannot be analysed yet: {why}.{more}", className="bm-empty", id="bundle-error")
    builders = {
        "map": map_view,
        "timeline": timeline_view,
        "latency": latency_view,
        "requests": requests_view,
        "roofline": roofline_view,
    }
    if tab == "compare":
        return compare_view(loaded, store, compare_id)
    if tab not in builders:
        tab = "map"
    if tab == "requests":
        return requests_view(loaded)
    # built once per loaded bundle (a live bundle that grows is a new Loaded)
    return loaded.memoised(f"view:{tab}", lambda: builders[tab](loaded))


# -- view 1: the map ------------------------------------------------------------


def map_view(loaded: Loaded) -> html.Div:
    m = loaded.bmap
    legend = sorted({s.cls for s in m.stages if s.share and s.share > 0 and s.cls}, key=list(CLASS_NAMES).index)
    return html.Div(
        className="bm-map",
        children=[
            html.Div(
                className="bm-map-main",
                children=[
                    html.H3(
                        "Where a request's latency goes: query → tokenize → queue → prefill → decode → streaming → response"
                    ),
                    html.P(
                        "Width is each stage's share of summed end-to-end latency; colour is the bottleneck class "
                        "the analyzer puts behind the stage. Hover a stage for p50/p95/p99.",
                        className="bm-help",
                    ),
                    dcc.Graph(id="map-graph", figure=map_figure(m), config=GRAPH_CONFIG),
                    html.Div([_chip(c) for c in legend], className="bm-legend"),
                    _stage_table(m),
                    _worst_table(m),
                ],
            ),
            html.Aside(className="bm-verdict", children=verdict_panel(m)),
        ],
    )


def _chip(cls: str | None, text: str | None = None) -> html.Span:
    return html.Span(
        [html.Span(className="bm-swatch", style={"background": class_color(cls)}), text or class_name(cls)],
        className="bm-chip",
    )


def _stage_table(m: Any) -> html.Table:
    rows = stage_rows(m)
    head = html.Tr([html.Th(h) for h in ("stage", "share of latency", "p50", "p95", "class behind it")])
    body = []
    for r in rows:
        body.append(
            html.Tr(
                [
                    html.Td([html.Span(r["group"] + " · ", className="bm-muted"), r["stage"]]),
                    html.Td(
                        html.Div(
                            [
                                html.Div(
                                    className="bm-bar",
                                    style={"width": f"{r['share'] * 100:.1f}%", "background": class_color(r["cls"])},
                                ),
                                html.Span(fmt_pct(r["share"]), className="bm-bar-label"),
                            ],
                            className="bm-bar-cell",
                        )
                    ),
                    html.Td(r["p50"], className="bm-num"),
                    html.Td(r["p95"], className="bm-num"),
                    html.Td(_chip(r["cls"])),
                ]
            )
        )
    return html.Table([html.Thead(head), html.Tbody(body)], className="bm-table", id="stage-table")


def _worst_table(m: Any) -> Any:
    """The analyzer's slowest requests and the class that explains each (open them in the explorer)."""
    if not m.worst_requests:
        return None
    head = html.Tr([html.Th(h) for h in ("slowest requests", "class", "E2E", "TTFT", "largest stage", "why")])
    body = [
        html.Tr(
            [
                html.Td(html.Code(r.request_id)),
                html.Td(r.workload_class or "–"),
                html.Td(fmt_s(r.e2e_s), className="bm-num"),
                html.Td(fmt_s(r.ttft_s), className="bm-num"),
                html.Td(stage_name(r.dominant_stage)),
                html.Td([_chip(r.cls), html.Div(r.why, className="bm-muted")]),
            ]
        )
        for r in m.worst_requests
    ]
    return html.Table([html.Thead(head), html.Tbody(body)], className="bm-table bm-worst", id="worst-table")


def verdict_panel(m: Any) -> list[Any]:
    top = m.top
    out: list[Any] = []
    if top is None:
        out.append(html.H2("No verdict", className="bm-verdict-title"))
        out.append(html.P("The analyzer reached no verdict for this bundle.", className="bm-help"))
    else:
        out += [
            html.Div("top verdict", className="bm-eyebrow"),
            html.H2(
                [
                    html.Span(className="bm-swatch bm-swatch-lg", style={"background": class_color(top.cls)}),
                    class_name(top.cls),
                ],
                className="bm-verdict-title",
                id="top-verdict",
            ),
            html.Div(
                [
                    html.Span([html.B(fmt_pct(top.share_of_latency)), " of latency"], className="bm-stat"),
                    html.Span([html.B(f"{top.confidence:.2f}"), " confidence"], className="bm-stat"),
                    html.Span([html.B(f"{top.requests_affected:,}"), " requests"], className="bm-stat"),
                    html.Span([html.B(f"{len(top.windows)}"), " windows"], className="bm-stat"),
                ],
                className="bm-stats",
            ),
            html.H4("Evidence"),
            html.Ul([html.Li(e.text) for e in top.evidence] or [html.Li("none recorded")], className="bm-evidence"),
            html.H4("What to change"),
            html.P(top.recommendation or "–", className="bm-reco"),
        ]
        if top.knobs:
            out.append(html.Div([html.Code(k, className="bm-knob") for k in top.knobs], className="bm-knobs"))
    others = [v for v in m.verdicts if top is None or v.cls != top.cls]
    if others:
        out.append(html.H4("Other constraints, ranked"))
        out.append(
            html.Ul(
                [
                    html.Li([_chip(v.cls), f" {fmt_pct(v.share_of_latency)} of latency, confidence {v.confidence:.2f}"])
                    for v in others[:6]
                ],
                className="bm-others",
            )
        )
    if m.unreachable:
        out.append(html.H4("Not assessable from this bundle"))
        out.append(
            html.Ul(
                [html.Li([html.B(class_name(u.cls)), f": {u.reason}"]) for u in m.unreachable],
                className="bm-muted-list",
            )
        )
    if m.warnings:
        out.append(
            html.Details(
                [html.Summary(f"{len(m.warnings)} analysis warnings"), html.Ul([html.Li(w) for w in m.warnings])]
            )
        )
    return out


# -- view 2: timeline -----------------------------------------------------------


def timeline_data(loaded: Loaded) -> tuple[Any, Any]:
    t0 = drilldown.t0_ns(loaded)
    engine = loaded.memoised("engine_frame", lambda: series.engine_frame(loaded.tables.steps, t0))
    hardware = loaded.memoised("hardware_frame", lambda: series.hardware_frame(loaded.tables.samples, t0))
    return engine, hardware


def timeline_figure_for(loaded: Loaded, x_range: tuple[float, float] | None = None) -> Any:
    if x_range is None:
        return loaded.memoised("timeline:full", lambda: _timeline_figure(loaded, None))
    return _timeline_figure(loaded, x_range)


def _timeline_figure(loaded: Loaded, x_range: tuple[float, float] | None) -> Any:
    engine, hardware = timeline_data(loaded)
    eng = series.bucket(engine, series.ENGINE_AGG, x_range=x_range)
    hw_cols = {c: "mean" for c in hardware.frame.columns if c != "t_s"}
    hw = series.HardwareFrame(
        series.bucket(hardware.frame, hw_cols, x_range=x_range), hardware.groups, hardware.missing, hardware.throttle
    )
    return timeline_figure(loaded.bmap.windows, loaded.bmap.window_s, eng, hw, x_range=x_range)


def timeline_view(loaded: Loaded) -> html.Div:
    engine, hardware = timeline_data(loaded)
    notes = []
    if not len(engine):
        notes.append("This bundle has no engine steps (for example an ingested vLLM trace): engine panels are hidden.")
    if hardware.missing:
        notes.append(
            "Not in this bundle: " + "; ".join(hardware.missing) + ". Run with the agent on a GPU host to record them."
        )
    return html.Div(
        [
            html.P(
                "All panels share one time axis: drag to zoom any panel and all follow; dense series are "
                "re-aggregated on the server for the range shown. Double-click to reset.",
                className="bm-help",
            ),
            html.Ul([html.Li(n) for n in notes], className="bm-notes") if notes else None,
            dcc.Graph(id="timeline-graph", figure=timeline_figure_for(loaded), config=GRAPH_CONFIG),
            dcc.Store(id="timeline-range"),
        ]
    )


# -- view 3: latency distributions ---------------------------------------------


def latency_view(loaded: Loaded) -> html.Div:
    m = loaded.bmap
    reqs = drilldown.requests_table(loaded)
    itl = drilldown.itl_table(loaded)
    rows = goodput_rows(m.latency, m.slo)
    slo_text = (
        ", ".join(f"{k} ≤ {fmt_s(v)}" for k, v in m.slo.items())
        if m.slo
        else "none given (start with --slo ttft=…,tpot=…,e2e=…)"
    )
    return html.Div(
        [
            html.P(
                [
                    "SLO: ",
                    html.B(slo_text),
                    ". Definitions as vllm bench serve: TPOT = (E2E − TTFT)/(output tokens − 1), ITL pooled over all gaps.",
                ],
                className="bm-help",
            ),
            dcc.Graph(id="latency-graph", figure=latency_figure(reqs, itl, m.slo, m.latency), config=GRAPH_CONFIG),
            html.H4("Throughput and goodput per workload class"),
            html.Table(
                [
                    html.Thead(html.Tr([html.Th(k) for k in rows[0]])),
                    html.Tbody([html.Tr([html.Td(v) for v in r.values()]) for r in rows]),
                ]
                if rows
                else [],
                className="bm-table",
                id="goodput-table",
            ),
        ]
    )


# -- view 4: request explorer ---------------------------------------------------

_MS = {"function": "params.value == null ? '–' : d3.format('.2f')(params.value * 1000) + ' ms'"}
_GRID_COLUMNS = [
    {"field": "request_id", "headerName": "request", "filter": "agTextColumnFilter", "pinned": "left", "width": 130},
    {"field": "workload_class", "headerName": "class", "filter": "agTextColumnFilter", "width": 100},
    {"field": "ok", "headerName": "ok", "width": 70, "filter": False},
    {"field": "ttft_s", "headerName": "TTFT", "filter": "agNumberColumnFilter", "valueFormatter": _MS},
    {"field": "tpot_s", "headerName": "TPOT", "filter": "agNumberColumnFilter", "valueFormatter": _MS},
    {"field": "e2e_s", "headerName": "E2E", "filter": "agNumberColumnFilter", "valueFormatter": _MS, "sort": "desc"},
    {"field": "prompt_tokens", "headerName": "prompt tok", "filter": "agNumberColumnFilter"},
    {"field": "output_tokens", "headerName": "output tok", "filter": "agNumberColumnFilter"},
    {"field": "cached_prompt_tokens", "headerName": "cached tok", "filter": "agNumberColumnFilter"},
    {"field": "preemptions", "headerName": "preempted", "filter": "agNumberColumnFilter"},
    {"field": "steps", "headerName": "steps", "filter": "agNumberColumnFilter"},
    {"field": "dominant_stage", "headerName": "largest stage", "filter": "agTextColumnFilter"},
]


def requests_view(loaded: Loaded) -> html.Div:
    return html.Div(
        [
            html.P(
                "Every request of the run; sort and filter on the server (click a header, use the column menu). "
                "Select a row to see its waterfall of stages and the engine steps it was in.",
                className="bm-help",
            ),
            dag.AgGrid(
                id="req-grid",
                columnDefs=_GRID_COLUMNS,
                defaultColDef={"sortable": True, "resizable": True, "floatingFilter": True, "minWidth": 90, "flex": 1},
                rowModelType="infinite",
                getRowId="params.data.request_id",
                dashGridOptions={
                    "rowSelection": {"mode": "singleRow", "checkboxes": False, "enableClickSelection": True},
                    "cacheBlockSize": 100,
                    "maxBlocksInCache": 20,
                    "rowBuffer": 20,
                },
                style={"height": "360px"},
            ),
            html.Div(
                id="waterfall",
                className="bm-waterfall",
                children=html.P("Select a request above.", className="bm-help"),
            ),
        ]
    )


# -- view 5: roofline -----------------------------------------------------------


def roofline_view(loaded: Loaded) -> html.Div:
    m = loaded.bmap
    per_step = drilldown.step_roofline(loaded)
    peaks = m.device
    rows = [
        html.Tr(
            [
                html.Td(p.phase),
                html.Td(f"{p.steps:,}", className="bm-num"),
                html.Td("–" if p.arithmetic_intensity is None else f"{p.arithmetic_intensity:.1f}", className="bm-num"),
                html.Td(fmt_si(p.achieved_flops_per_s, "FLOP/s"), className="bm-num"),
                html.Td(fmt_si(p.achieved_bytes_per_s, "B/s"), className="bm-num"),
                html.Td(p.bound or "–"),
                html.Td(fmt_pct(p.flops_utilization), className="bm-num"),
                html.Td(fmt_pct(p.bandwidth_utilization), className="bm-num"),
            ]
        )
        for p in m.roofline
    ]
    note = f"Device peaks from {peaks.source}" + (f": {peaks.note}" if peaks.note else "")
    children: list[Any] = [html.P(note, className="bm-help")]
    if not len(per_step):
        children.append(
            html.P("This bundle has no engine steps, so there is no roofline to draw.", className="bm-empty")
        )
        return html.Div(children)
    children += [
        dcc.Graph(id="roofline-graph", figure=roofline_figure(per_step, peaks, m.roofline), config=GRAPH_CONFIG),
        html.Table(
            [
                html.Thead(
                    html.Tr(
                        [
                            html.Th(h)
                            for h in (
                                "phase",
                                "steps",
                                "FLOP/B",
                                "FLOP/s",
                                "bytes/s",
                                "bound",
                                "% peak FLOP/s",
                                "% peak BW",
                            )
                        ]
                    )
                ),
                html.Tbody(rows),
            ],
            className="bm-table",
        ),
    ]
    return html.Div(children)


# -- view 6: compare -----------------------------------------------------------


def compare_view(loaded: Loaded, store: Store, compare_id: str | None) -> html.Div:
    options = [o for o in store.registry.options() if o["value"] != loaded.entry.id]
    if not options:
        return html.Div(
            html.P(
                "Only one bundle is open. Name two on the command line "
                "(bottleneck-map dashboard BEFORE AFTER) or keep several runs under ./bmap-runs/.",
                className="bm-empty",
            )
        )
    value = compare_id if any(o["value"] == compare_id for o in options) else options[0]["value"]
    return html.Div(
        [
            html.Div(
                [
                    html.Span(["A: ", html.B(loaded.entry.label)], className="bm-kv"),
                    html.Span("compare with B:", className="bm-kv"),
                    dcc.Dropdown(
                        id="compare-with",
                        options=options,
                        value=value,
                        clearable=False,
                        searchable=False,
                        className="bm-compare-picker",
                    ),
                ],
                className="bm-compare-bar",
            ),
            html.Div(id="compare-content", children=compare_content(loaded, store.get(value))),
        ]
    )


def compare_content(a: Loaded, b: Loaded | None) -> list[Any]:
    if b is None:
        return [html.P("That bundle is not available.", className="bm-empty")]
    from bottleneck_map.dashboard.diffview import diff_table

    side = html.Div(
        [
            html.Div(
                [
                    html.H4(["A: ", a.entry.label]),
                    _verdict_line(a.bmap),
                    dcc.Graph(figure=map_figure(a.bmap), config=GRAPH_CONFIG, className="bm-mini-map"),
                ],
                className="bm-side",
            ),
            html.Div(
                [
                    html.H4(["B: ", b.entry.label]),
                    _verdict_line(b.bmap),
                    dcc.Graph(figure=map_figure(b.bmap), config=GRAPH_CONFIG, className="bm-mini-map"),
                ],
                className="bm-side",
            ),
        ],
        className="bm-side-by-side",
    )
    return [
        side,
        dcc.Graph(
            id="compare-graph",
            figure=compare_figure(a.bmap, b.bmap, (f"A: {a.entry.path.name}", f"B: {b.entry.path.name}")),
            config=GRAPH_CONFIG,
        ),
        diff_table(a.bmap, b.bmap),
    ]


def _verdict_line(m: Any) -> html.P:
    if m.top is None:
        return html.P("no verdict", className="bm-help")
    return html.P(
        [_chip(m.top.cls), f" {fmt_pct(m.top.share_of_latency)} of latency, confidence {m.top.confidence:.2f}"]
    )


__all__ = ["page", "view", "run_summary", "timeline_figure_for", "group_class"]
