"""View 5, the roofline: every engine step at its arithmetic intensity and achieved FLOP/s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from bottleneck_map.dashboard.style import PHASE_COLORS, base_layout, fmt_si

MAX_POINTS_PER_PHASE = 15_000


def roofline_figure(per_step: pd.DataFrame, peaks: Any, points: Sequence[Any] = (), *, seed: int = 0) -> go.Figure:
    """Log-log roofline: the device's roof (bandwidth slope, compute ceiling), steps as points per
    phase (a uniform sample when there are very many), and the analyzer's aggregate per phase as
    large markers. ``per_step`` is the analyzer's per-step roofline table; ``peaks`` its DevicePeaks."""
    fig = go.Figure()
    ok = per_step.dropna(subset=["arithmetic_intensity", "achieved_flops_per_s"]) if len(per_step) else per_step
    ok = ok[(ok["arithmetic_intensity"] > 0) & (ok["achieved_flops_per_s"] > 0)] if len(ok) else ok
    rng = np.random.default_rng(seed)
    for phase in ("prefill", "mixed", "decode"):
        sel = ok[ok["phase"] == phase] if len(ok) else ok
        if not len(sel):
            continue
        shown = sel
        if len(sel) > MAX_POINTS_PER_PHASE:
            shown = sel.iloc[np.sort(rng.choice(len(sel), MAX_POINTS_PER_PHASE, replace=False))]
        label = f"{phase} steps ({len(sel):,}{', sampled' if len(shown) < len(sel) else ''})"
        fig.add_trace(
            go.Scattergl(
                x=shown["arithmetic_intensity"],
                y=shown["achieved_flops_per_s"],
                mode="markers",
                name=label,
                marker={"color": PHASE_COLORS[phase], "size": 5, "opacity": 0.55},
                customdata=np.stack([shown["step_id"], shown["tokens"], shown["time_s"] * 1e3], axis=1),
                hovertemplate=(
                    f"{phase} step %{{customdata[0]}}<br>%{{customdata[1]:.0f}} tokens, %{{customdata[2]:.2f}} ms<br>"
                    "intensity %{x:.1f} FLOP/B<br>%{y:.3s}FLOP/s<extra></extra>"
                ),
            )
        )
    for p in points:
        if p.arithmetic_intensity is None or not p.achieved_flops_per_s:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p.arithmetic_intensity],
                y=[p.achieved_flops_per_s],
                mode="markers" if p.phase == "all" else "markers+text",
                name=f"{p.phase} (aggregate)",
                text=[f"{p.phase}: {p.bound or ''}-bound"],
                textposition={"prefill": "top left", "decode": "top center", "mixed": "bottom right"}.get(
                    p.phase, "top center"
                ),
                marker={
                    "symbol": "diamond",
                    "size": 15,
                    "color": PHASE_COLORS.get(p.phase, "#333"),
                    "line": {"width": 2, "color": "white"},
                },
                hovertemplate=(
                    f"{p.phase}, {p.steps:,} steps<br>intensity %{{x:.1f}} FLOP/B<br>%{{y:.3s}}FLOP/s"
                    f"<br>{_pct(p.flops_utilization)} of peak FLOP/s, {_pct(p.bandwidth_utilization)} of peak bandwidth<extra></extra>"
                ),
            )
        )
    bw, flops = getattr(peaks, "peak_bandwidth_bytes_per_s", None), getattr(peaks, "peak_flops", None)
    xs = ok["arithmetic_intensity"].to_numpy() if len(ok) else np.array([1.0, 100.0])
    lo = max(min(float(np.nanmin(xs)) / 3, 0.5), 1e-3)
    hi = max(float(np.nanmax(xs)) * 3, (flops / bw * 10) if bw and flops else 10.0)
    if bw and flops:
        ridge = flops / bw
        x = np.geomspace(lo, hi, 200)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=np.minimum(flops, x * bw),
                mode="lines",
                name=f"roof: {fmt_si(bw, 'B/s')}, {fmt_si(flops, 'FLOP/s')} ({peaks.source})",
                line={"color": "#1f2933", "width": 2.5},
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[ridge],
                y=[flops],
                mode="markers+text",
                text=[f"ridge {ridge:.0f} FLOP/B"],
                textposition="bottom right",
                marker={"symbol": "line-ns-open", "size": 18, "color": "#555", "line": {"width": 2}},
                name="ridge point",
                showlegend=False,
                hovertemplate="ridge point: %{x:.0f} FLOP/B<br>left of it memory-bound, right of it compute-bound<extra></extra>",
            )
        )
    title = f"Roofline of {getattr(peaks, 'name', 'the device')}"
    base_layout(fig, height=560, title=title)
    # SI prefixes (100G, 1T): plotly's default "B" for billions reads as bytes next to FLOP/s
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP per byte moved)", exponentformat="SI")
    fig.update_yaxes(type="log", title_text="achieved FLOP/s", exponentformat="SI")
    fig.update_layout(legend={"y": -0.18, "yanchor": "top"}, margin={"b": 110})
    return fig


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"
