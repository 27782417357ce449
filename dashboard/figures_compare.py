"""View 6, compare: two bundles' maps side by side (stage time and latency percentiles)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bottleneck_map.dashboard.style import base_layout, stage_name

BEFORE_COLOR = "#9AA0A6"
AFTER_COLOR = "#4C78A8"


def compare_figure(before: Any, after: Any, labels: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Left: mean time per request in each stage, A against B. Right: TTFT/TPOT/ITL/E2E p50 and p95."""
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        subplot_titles=["mean time per request in each stage (ms)", "latency percentiles (ms)"],
        horizontal_spacing=0.12,
    )
    stages = [s.stage for s in before.stages]
    stages += [s.stage for s in after.stages if s.stage not in stages]
    for m, label, color in ((before, labels[0], BEFORE_COLOR), (after, labels[1], AFTER_COLOR)):
        by = {s.stage: s for s in m.stages}
        names = [stage_name(s) for s in stages]
        means = [(by[s].mean_s or 0) * 1e3 if s in by else 0 for s in stages]
        fig.add_trace(
            go.Bar(y=names, x=means, orientation="h", name=label, marker={"color": color}, legendgroup=label),
            row=1,
            col=1,
        )
        lat = m.latency_for("all")
        cats, vals = [], []
        for key in ("ttft", "tpot", "itl", "e2e"):
            p = getattr(lat, key, None) if lat else None
            for q in ("p50", "p95"):
                cats.append(f"{key.upper()} {q}")
                vals.append(None if p is None or getattr(p, q) is None else getattr(p, q) * 1e3)
        fig.add_trace(
            go.Bar(x=cats, y=vals, name=label, marker={"color": color}, legendgroup=label, showlegend=False),
            row=1,
            col=2,
        )
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    base_layout(fig, height=460)
    # the legend above the subplot titles, not on them
    fig.update_layout(barmode="group", margin={"t": 90}, legend={"y": 1.12, "yanchor": "bottom", "x": 0})
    return fig
