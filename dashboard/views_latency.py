"""View 3, latency distributions: CDFs and the goodput table."""

from __future__ import annotations

from dash import dcc, html

from bottleneck_map.dashboard import drilldown
from bottleneck_map.dashboard.components import GRAPH_CONFIG
from bottleneck_map.dashboard.figures_latency import goodput_rows, latency_figure
from bottleneck_map.dashboard.store import Loaded
from bottleneck_map.dashboard.style import fmt_s


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
