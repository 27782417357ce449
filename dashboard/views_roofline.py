"""View 5, the roofline: the figure and the per-phase table."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from bottleneck_map.dashboard import drilldown
from bottleneck_map.dashboard.components import GRAPH_CONFIG
from bottleneck_map.dashboard.figures_roofline import roofline_figure
from bottleneck_map.dashboard.store import Loaded
from bottleneck_map.dashboard.style import fmt_pct, fmt_si


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
