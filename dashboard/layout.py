"""The page: header with the bundle picker, one tab per view, and each view's content."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from bottleneck_map.dashboard.bundles import BundleRegistry
from bottleneck_map.dashboard.store import Loaded, Store
from bottleneck_map.dashboard.style import fmt_s
from bottleneck_map.dashboard.views_compare import compare_view
from bottleneck_map.dashboard.views_latency import latency_view
from bottleneck_map.dashboard.views_map import map_view
from bottleneck_map.dashboard.views_requests import requests_view
from bottleneck_map.dashboard.views_roofline import roofline_view
from bottleneck_map.dashboard.views_timeline import timeline_view

TABS = [
    ("map", "The map"),
    ("timeline", "Timeline"),
    ("latency", "Latency distributions"),
    ("requests", "Request explorer"),
    ("roofline", "Roofline"),
    ("compare", "Compare"),
]
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
            dcc.Store(id="view-ready"),
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
