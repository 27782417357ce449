"""One self-contained offline HTML report to attach to a ticket.

plotly.js's basic bundle (scatter, bar, pie: all the report draws; 1.2 MB against 4.8 MB for the
full library) is inlined once from ``assets/``, so the file opens offline; colours are the
dashboard's (:mod:`bottleneck_map.palette`)."""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from bottleneck_map.analyzer.result import CLASSES, STAGE_GROUPS, BottleneckMap
from bottleneck_map.palette import CLASS_COLORS as _COLORS
from bottleneck_map.palette import INK, NO_CLASS_COLOR, PHASE_COLORS

# The trace types the basic bundle draws; a figure here must use only these.
PLOTLY_BASIC_TRACES = frozenset({"scatter", "bar", "pie"})


@cache
def plotly_basic_js() -> str:
    """plotly.js's basic bundle (the version plotly.py ships, minified, MIT licence beside it)."""
    return files("bottleneck_map.analyzer").joinpath("assets/plotly-basic.min.js").read_text(encoding="utf-8")


def stage_figure(m: BottleneckMap) -> go.Figure:
    """The map: share of latency per stage, grouped query -> response."""
    fig = go.Figure()
    for s in m.stages:
        if s.total_s <= 0:
            continue
        fig.add_bar(
            x=[s.share * 100],
            y=[s.group],
            orientation="h",
            name=s.stage,
            marker_color=_COLORS.get(s.cls or "", NO_CLASS_COLOR),
            hovertemplate=f"{s.stage}: %{{x:.1f}}% of latency<br>p50 {1e3 * (s.p50_s or 0):.1f} ms, p95 {1e3 * (s.p95_s or 0):.1f} ms<br>class: {s.cls}<extra></extra>",
        )
    fig.update_layout(
        barmode="stack",
        title="Where latency goes (share of summed E2E)",
        xaxis_title="%",
        yaxis={"categoryorder": "array", "categoryarray": list(STAGE_GROUPS)[::-1]},
        height=320,
    )
    return fig


def timeline_figure(m: BottleneckMap, timeline: pd.DataFrame | None = None) -> go.Figure:
    """Per-window verdict scores (stacked areas of class confidence would hide the winner; show scores as lines)."""
    fig = go.Figure()
    x = [w.start_s for w in m.windows]
    for cls in CLASSES:
        if cls == "balanced":
            continue
        y = [w.scores.get(cls, 0.0) for w in m.windows]
        if max(y, default=0) <= 0.05:
            continue
        fig.add_scatter(x=x, y=y, mode="lines", name=cls, line={"color": _COLORS[cls]})
    fig.add_scatter(
        x=x,
        y=[w.kv_usage for w in m.windows],
        mode="lines",
        name="KV usage",
        line={"dash": "dot", "color": "#444"},
        yaxis="y2",
    )
    fig.update_layout(
        title=f"Per-window verdict confidence ({m.window_s:g} s windows)",
        xaxis_title="s since start",
        yaxis={"title": "confidence", "range": [0, 1]},
        yaxis2={"overlaying": "y", "side": "right", "range": [0, 1], "title": "KV usage"},
        height=360,
    )
    return fig


def roofline_figure(m: BottleneckMap, per_step: pd.DataFrame | None = None) -> go.Figure:
    fig = go.Figure()
    peak_f, peak_b = m.device.peak_flops, m.device.peak_bandwidth_bytes_per_s
    if per_step is not None and not per_step.empty and "arithmetic_intensity" in per_step:
        sample = per_step if len(per_step) <= 5000 else per_step.sample(5000, random_state=0)
        for phase, g in sample.groupby("phase"):
            fig.add_scatter(
                x=g["arithmetic_intensity"],
                y=g["achieved_flops_per_s"],
                mode="markers",
                name=f"{phase} steps",
                marker={"size": 4, "opacity": 0.5, "color": PHASE_COLORS.get(str(phase), INK)},
            )
    for p in m.roofline:
        if p.arithmetic_intensity and p.achieved_flops_per_s:
            fig.add_scatter(
                x=[p.arithmetic_intensity],
                y=[p.achieved_flops_per_s],
                mode="markers+text",
                text=[p.phase],
                textposition="top center",
                marker={"size": 12, "symbol": "diamond", "color": PHASE_COLORS.get(p.phase, INK)},
                name=f"{p.phase} (all steps)",
            )
    if peak_f and peak_b:
        xs = np.logspace(-1, 4, 100)
        fig.add_scatter(
            x=xs,
            y=np.minimum(peak_f, xs * peak_b),
            mode="lines",
            name=f"roofline ({m.device.source})",
            line={"color": INK},
        )
    fig.update_layout(
        title="Roofline per step",
        xaxis={"type": "log", "title": "FLOP / byte"},
        yaxis={"type": "log", "title": "FLOP/s"},
        height=420,
    )
    return fig


def _verdict_html(m: BottleneckMap) -> str:
    if m.top is None:
        return "<p>No verdict (no finished requests).</p>"
    top = m.top
    items = "".join(f"<li>{html.escape(e.text)}</li>" for e in top.evidence)
    others = "".join(
        f"<tr><td>{v.cls}</td><td>{100 * v.share_of_latency:.0f}%</td><td>{v.confidence:.2f}</td><td>{html.escape(v.recommendation)}</td></tr>"
        for v in m.verdicts
    )
    unreach = "".join(f"<li><b>{u.cls}</b>: {html.escape(u.reason)}</li>" for u in m.unreachable)
    return (
        f"<h2>{html.escape(top.cls.replace('_', ' '))} &mdash; {100 * top.share_of_latency:.0f}% of latency, confidence {top.confidence:.2f}</h2>"
        f"<ul>{items}</ul><p><b>Fix:</b> {html.escape(top.recommendation)}</p>"
        f"<h3>All classes</h3><table><tr><th>class</th><th>share</th><th>confidence</th><th>recommendation</th></tr>{others}</table>"
        + (f"<h3>Cannot judge</h3><ul>{unreach}</ul>" if unreach else "")
    )


def _latency_html(m: BottleneckMap) -> str:
    head = (
        "<tr><th>class</th><th>n</th>"
        + "".join(f"<th>{k} p50/p90/p99 ms</th>" for k in ("TTFT", "TPOT", "ITL", "E2E"))
        + "<th>req/s</th><th>out tok/s</th><th>goodput</th></tr>"
    )
    rows = []
    for s in m.latency:
        cells = "".join(
            f"<td>{'/'.join('-' if v is None else f'{1e3 * v:.1f}' for v in (p.p50, p.p90, p.p99))}</td>"
            for p in (s.ttft, s.tpot, s.itl, s.e2e)
        )
        good = "-" if s.goodput is None else f"{s.goodput:.2f}/s"
        rows.append(
            f"<tr><td>{html.escape(s.workload_class)}</td><td>{s.completed}</td>{cells}<td>{s.request_throughput:.2f}</td><td>{s.output_token_throughput:.0f}</td><td>{good}</td></tr>"
        )
    return f"<h3>Latency (as vllm bench serve)</h3><table>{head}{''.join(rows)}</table>"


def _worst_html(m: BottleneckMap) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(w.request_id)}</td><td>{w.e2e_s:.3f}</td><td>{w.cls or 'unattributed'}</td><td>{html.escape(w.why)}</td></tr>"
        for w in m.worst_requests
    )
    return f"<h3>Slowest requests</h3><table><tr><th>request</th><th>E2E s</th><th>class</th><th>why</th></tr>{rows}</table>"


_CSS = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}"


def render_html(m: BottleneckMap, *, per_step: pd.DataFrame | None = None) -> str:
    """A complete offline HTML document."""
    figs = [stage_figure(m), timeline_figure(m), roofline_figure(m, per_step)]
    parts = [pio.to_html(f, include_plotlyjs=False, full_html=False) for f in figs]
    title = f"bottleneck map: {m.model or ''} {m.run_id or ''}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script>{plotly_basic_js()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(m.device.name)} ({m.device.kind}, peaks: {m.device.source}), {m.duration_s:.1f} s, bundle {html.escape(m.bundle)}</p>"
        + _verdict_html(m)
        + parts[0]
        + _latency_html(m)
        + parts[1]
        + parts[2]
        + _worst_html(m)
        + "</body></html>"
    )
