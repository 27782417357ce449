"""Callbacks: switch tab or bundle, page the request grid, draw a waterfall, re-aggregate on zoom, live refresh.

Every callback that opens a bundle receives only a registry id from the browser and
looks it up in the server's registry; an unknown id renders nothing.
"""

from __future__ import annotations

import re
from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from bottleneck_map.dashboard import drilldown, layout
from bottleneck_map.dashboard.figures_requests import waterfall_figure
from bottleneck_map.dashboard.store import Store

_RANGE_KEY = re.compile(r"^xaxis\d*\.range\[(0|1)\]$")


def register(app: Dash, store: Store) -> None:
    @app.callback(
        Output("tab-content", "children"),
        Output("run-summary", "children"),
        Output("bundle-sig", "data"),
        Input("tabs", "value"),
        Input("bundle", "value"),
        Input("bundle-sig", "data"),
        State("compare-store", "data"),
        prevent_initial_call=True,
    )
    def render_tab(tab: str, bid: str, sig: Any, compare_id: Any) -> tuple[Any, Any, Any]:
        loaded = store.get(bid)
        new_sig = None if loaded is None else repr(loaded.signature)
        content = layout.view(tab, loaded, store, compare_id if isinstance(compare_id, str) else None)
        return content, layout.run_summary(loaded), (no_update if new_sig == sig else new_sig)

    @app.callback(
        Output("compare-content", "children"),
        Output("compare-store", "data"),
        Input("compare-with", "value"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def render_compare(other: str, bid: str) -> tuple[Any, Any]:
        a = store.get(bid)
        if a is None:
            return html.P("This bundle is not available.", className="bm-empty"), no_update
        return layout.compare_content(a, store.get(other)), other

    @app.callback(
        Output("req-grid", "getRowsResponse"),
        Input("req-grid", "getRowsRequest"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def grid_rows(request: dict[str, Any] | None, bid: str) -> Any:
        loaded = store.get(bid)
        if loaded is None or not request:
            return no_update
        frame = drilldown.requests_table(loaded)
        return drilldown.page(frame, request, drilldown.REQUEST_COLUMNS)

    @app.callback(
        Output("waterfall", "children"),
        Input("req-grid", "selectedRows"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def show_waterfall(rows: Any, bid: str) -> Any:
        loaded = store.get(bid)
        if loaded is None or not rows or not isinstance(rows, list) or not isinstance(rows[0], dict):
            return html.P("Select a request above.", className="bm-help")
        rid = rows[0].get("request_id")
        timeline = drilldown.request_timeline(loaded, str(rid)) if rid is not None else None
        if timeline is None:
            return html.P("That request is not in this bundle.", className="bm-empty")
        return dcc.Graph(id="waterfall-graph", figure=waterfall_figure(timeline), config=layout.GRAPH_CONFIG)

    @app.callback(
        Output("timeline-graph", "figure"),
        Input("timeline-graph", "relayoutData"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def zoom_timeline(relayout: dict[str, Any] | None, bid: str) -> Any:
        """Re-aggregate the dense series for the range shown (full resolution once zoomed in enough)."""
        if not relayout:
            return no_update
        loaded = store.get(bid)
        if loaded is None:
            return no_update
        if any(k.endswith("autorange") for k in relayout):
            return layout.timeline_figure_for(loaded)
        bounds: dict[str, float] = {}
        for key, value in relayout.items():
            m = _RANGE_KEY.match(key)
            if m and isinstance(value, (int, float)):
                bounds[m.group(1)] = float(value)
        if len(bounds) != 2:
            for key, value in relayout.items():
                if re.match(r"^xaxis\d*\.range$", key) and isinstance(value, list) and len(value) == 2:
                    bounds = {"0": float(value[0]), "1": float(value[1])}
        if len(bounds) != 2 or bounds["1"] <= bounds["0"]:
            return no_update
        return layout.timeline_figure_for(loaded, (bounds["0"], bounds["1"]))

    @app.callback(
        Output("bundle-sig", "data", allow_duplicate=True),
        Output("bundle", "options"),
        Input("live-tick", "n_intervals"),
        State("bundle", "value"),
        State("bundle-sig", "data"),
        State("bundle", "options"),
        prevent_initial_call=True,
    )
    def live_tick(_n: int, bid: str, previous: Any, options: Any) -> tuple[Any, Any]:
        """Poll the bundle on disk; a new signature re-renders the current tab without reloading the page."""
        store.registry.refresh()
        sig = store.current_signature(bid)
        current = None if sig is None else repr(sig)
        fresh = store.registry.options()
        return (current if current != previous else no_update), (fresh if fresh != options else no_update)
