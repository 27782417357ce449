"""Callbacks: switch tab or bundle, page the request grid, draw a waterfall, re-aggregate on zoom, live refresh.

Every callback that opens a bundle receives only a registry id from the browser and
looks it up in the server's registry; an unknown id renders nothing.
"""

from __future__ import annotations

from typing import Any

from dash import ClientsideFunction, Dash, Input, Output, State, dcc, html, no_update

from bottleneck_map.dashboard import drilldown, layout
from bottleneck_map.dashboard.components import GRAPH_CONFIG
from bottleneck_map.dashboard.figures_requests import waterfall_figure
from bottleneck_map.dashboard.store import Store
from bottleneck_map.dashboard.views_compare import compare_content
from bottleneck_map.dashboard.views_timeline import timeline_figure_for


def register(app: Dash, store: Store) -> None:
    # A tab change first passes through the browser, which loads the component libraries the view
    # needs and were left out of the page (index_page.LAZY_LIBRARIES); then the server renders it.
    app.clientside_callback(
        ClientsideFunction(namespace="bmap", function_name="viewReady"),
        Output("view-ready", "data"),
        Input("tabs", "value"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("tab-content", "children"),
        Output("run-summary", "children"),
        Output("bundle-sig", "data"),
        Input("view-ready", "data"),
        Input("bundle", "value"),
        Input("bundle-sig", "data"),
        State("tabs", "value"),
        State("compare-store", "data"),
        prevent_initial_call=True,
    )
    def render_tab(_ready: Any, bid: str, sig: Any, tab: str, compare_id: Any) -> tuple[Any, Any, Any]:
        loaded = store.get(bid)
        current = store.current_signature(bid) if loaded is None else loaded.signature
        new_sig = None if current is None else repr(current)
        content = layout.view(tab, loaded, store, compare_id if isinstance(compare_id, str) else None, bid=bid)
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
        return compare_content(a, store.get(other)), other

    @app.callback(
        Output("req-grid", "getRowsResponse"),
        Input("req-grid", "getRowsRequest"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def grid_rows(request: dict[str, Any] | None, bid: str) -> Any:
        loaded = store.get(bid)
        if loaded is None or not request or not isinstance(request, dict):
            return no_update
        frame = drilldown.requests_table(loaded)
        try:
            return drilldown.page(frame, request, drilldown.REQUEST_COLUMNS)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError):  # a request no grid sends
            return no_update

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
        return dcc.Graph(id="waterfall-graph", figure=waterfall_figure(timeline), config=GRAPH_CONFIG)

    # Zoom events become a range in a store on the client; resize and hover events do not, so they
    # never cancel a pending re-aggregation.
    app.clientside_callback(
        """
        function(relayout) {
            const nu = window.dash_clientside.no_update;
            if (!relayout) { return nu; }
            let lo = null, hi = null;
            for (const [k, v] of Object.entries(relayout)) {
                if (/^xaxis\\d*\\.autorange$/.test(k)) { return "full"; }
                if (/^xaxis\\d*\\.range\\[0\\]$/.test(k)) { lo = v; }
                if (/^xaxis\\d*\\.range\\[1\\]$/.test(k)) { hi = v; }
                if (/^xaxis\\d*\\.range$/.test(k) && Array.isArray(v)) { lo = v[0]; hi = v[1]; }
            }
            return (typeof lo === "number" && typeof hi === "number" && hi > lo) ? [lo, hi] : nu;
        }
        """,
        Output("timeline-range", "data"),
        Input("timeline-graph", "relayoutData"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("timeline-graph", "figure"),
        Input("timeline-range", "data"),
        State("bundle", "value"),
        prevent_initial_call=True,
    )
    def zoom_timeline(x_range: Any, bid: str) -> Any:
        """Re-aggregate the dense series for the range shown (full resolution once zoomed in enough)."""
        loaded = store.get(bid)
        if loaded is None:
            return no_update
        if x_range == "full":
            return timeline_figure_for(loaded)
        if (
            not isinstance(x_range, list)
            or len(x_range) != 2
            or not all(isinstance(v, (int, float)) for v in x_range)
            or x_range[1] <= x_range[0]
        ):
            return no_update
        return timeline_figure_for(loaded, (float(x_range[0]), float(x_range[1])))

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
