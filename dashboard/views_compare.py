"""View 6, compare: two maps side by side, grouped bars and the analyzer's diff."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from bottleneck_map.dashboard.components import GRAPH_CONFIG
from bottleneck_map.dashboard.diffview import diff_table
from bottleneck_map.dashboard.figures_compare import compare_figure
from bottleneck_map.dashboard.figures_map import map_figure
from bottleneck_map.dashboard.store import Loaded, Store
from bottleneck_map.dashboard.views_map import verdict_line


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
    side = html.Div(
        [
            html.Div(
                [
                    html.H4(["A: ", a.entry.label]),
                    verdict_line(a.bmap),
                    dcc.Graph(figure=map_figure(a.bmap), config=GRAPH_CONFIG, className="bm-mini-map"),
                ],
                className="bm-side",
            ),
            html.Div(
                [
                    html.H4(["B: ", b.entry.label]),
                    verdict_line(b.bmap),
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
