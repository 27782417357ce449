"""View 1, the map: the icicle, the stage table, the slowest requests and the verdict panel."""

from __future__ import annotations

from typing import Any

from dash import html

from bottleneck_map.dashboard.components import chip
from bottleneck_map.dashboard.figures_map import map_icicle, stage_rows
from bottleneck_map.dashboard.store import Loaded
from bottleneck_map.dashboard.style import CLASS_NAMES, class_color, class_name, fmt_pct, fmt_s, stage_name


def map_view(loaded: Loaded) -> html.Div:
    m = loaded.bmap
    legend = sorted({s.cls for s in m.stages if s.share and s.share > 0 and s.cls}, key=list(CLASS_NAMES).index)
    return html.Div(
        className="bm-map",
        children=[
            html.Div(
                className="bm-map-main",
                children=[
                    *_invalid_banner(loaded.invalid),
                    html.H3(
                        "Where a request's latency goes: query → tokenize → queue → prefill → decode → streaming → response"
                    ),
                    html.P(
                        "Width is each stage's share of summed end-to-end latency; colour is the bottleneck class "
                        "the analyzer puts behind the stage. Hover a box for p50/p95/p99.",
                        className="bm-help",
                    ),
                    map_icicle(m),
                    html.Div([chip(c) for c in legend], className="bm-legend"),
                    _stage_table(m),
                    _worst_table(m),
                ],
            ),
            html.Aside(className="bm-verdict", children=verdict_panel(m)),
        ],
    )


def _invalid_banner(errors: list[str]) -> list[html.Div]:
    """What ``validate`` rejects in this bundle, above the map: its verdicts may rest on broken data."""
    if not errors:
        return []
    return [
        html.Div(
            [
                html.B("`bottleneck-map validate` rejects this bundle, so the map below may be wrong: "),
                html.Ul([html.Li(e) for e in errors[:10]]),
                html.Span(f"... and {len(errors) - 10} more" if len(errors) > 10 else ""),
            ],
            className="bm-invalid",
            id="bundle-invalid",
        )
    ]


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
                    html.Td(chip(r["cls"])),
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
                html.Td([chip(r.cls), html.Div(r.why, className="bm-muted")]),
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
        # The analyzer states a verdict as the answer only at or above its confidence threshold.
        confident = bool(getattr(top, "confident", True))
        out += [
            html.Div(
                "top verdict" if confident else "no confident verdict; strongest candidate", className="bm-eyebrow"
            ),
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
                    html.Li([chip(v.cls), f" {fmt_pct(v.share_of_latency)} of latency, confidence {v.confidence:.2f}"])
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


def verdict_line(m: Any) -> html.P:
    if m.top is None:
        return html.P("no verdict", className="bm-help")
    return html.P(
        [chip(m.top.cls), f" {fmt_pct(m.top.share_of_latency)} of latency, confidence {m.top.confidence:.2f}"]
    )
