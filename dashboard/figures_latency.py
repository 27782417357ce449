"""View 3, latency distributions: TTFT, TPOT, ITL and E2E CDFs per workload class, with SLO lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bottleneck_map.dashboard.style import WORKLOAD_COLORS, base_layout, fmt_s

CDF_POINTS = 300
METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"))


def cdf_points(values: np.ndarray, n: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF reduced to ``n`` quantiles (a handful of bytes, whatever the sample size)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.empty(0), np.empty(0)
    x = np.sort(v)
    if len(x) <= n:
        return x, np.arange(1, len(x) + 1) / len(x)
    p = np.linspace(0, 1, n)
    return x[np.rint(p * (len(x) - 1)).astype(np.int64)], p


def axis_range_ms(values: np.ndarray, slo_s: float | None = None) -> list[float] | None:
    """A log x range (log10 of ms) from the smallest value to twice the p99 (or the SLO line, or the
    maximum, when nearer): a few seconds-long gaps (a preemption, a stalled step) would otherwise
    stretch the axis over decades and squash the body of the CDF against its left edge."""
    v = np.asarray(values, dtype=np.float64) * 1e3
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return None
    lo, hi = float(v.min()), float(min(v.max(), 2 * np.percentile(v, 99)))
    if slo_s:
        hi = max(hi, slo_s * 1e3 * 1.3)
    hi = max(hi, lo * 1.5)
    return [np.log10(lo / 1.15), np.log10(hi * 1.15)]


def latency_figure(
    requests: pd.DataFrame,
    itl: pd.DataFrame,
    slo: Mapping[str, float] | None,
    summaries: Sequence[Any],
) -> go.Figure:
    """2x2 CDFs; one line per workload class plus all requests; dashed SLO line where one was set.

    ``requests`` has workload_class, ok, ttft_s, tpot_s, e2e_s (the analyzer's per-request metrics);
    ``itl`` has workload_class, itl_s; ``summaries`` are the map's LatencySummary list.
    """
    slo = dict(slo or {})
    by_class = {s.workload_class: s for s in summaries}
    titles = []
    overall = by_class.get("all")
    ok = requests[requests["ok"]] if "ok" in requests else requests
    every = {key: itl["itl_s"].to_numpy() if key == "itl" else ok[f"{key}_s"].to_numpy() for key, _ in METRICS}
    ranges = {key: axis_range_ms(v, slo.get(key)) for key, v in every.items()}
    for key, label in METRICS:
        p = getattr(overall, key, None) if overall else None
        extra = f": p50 {fmt_s(p.p50)} · p99 {fmt_s(p.p99)}" if p is not None and p.p50 is not None else ""
        v = every[key][np.isfinite(every[key])]
        if ranges[key] is not None and len(v) and np.log10(v.max() * 1e3) > ranges[key][1]:
            extra += f" · max {fmt_s(float(v.max()))} (off the axis)"
        titles.append(f"{label}{extra}")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16)
    classes = sorted(c for c in ok["workload_class"].dropna().unique()) if len(ok) else []
    groups = [("all", None)] + [(c, c) for c in classes] if len(classes) > 1 else [("all", None)]
    for i, (name, cls) in enumerate(groups):
        color = "#1f2933" if cls is None else WORKLOAD_COLORS[(i - 1) % len(WORKLOAD_COLORS)]
        for j, (key, label) in enumerate(METRICS):
            if key == "itl":
                values = (
                    itl["itl_s"].to_numpy()
                    if cls is None
                    else itl.loc[itl["workload_class"] == cls, "itl_s"].to_numpy()
                )
            else:
                sel = ok if cls is None else ok[ok["workload_class"] == cls]
                values = sel[f"{key}_s"].to_numpy()
            x, y = cdf_points(values)
            if not len(x):
                continue
            fig.add_trace(
                go.Scatter(
                    x=x * 1e3,
                    y=y,
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=j == 0,
                    line={"color": color, "width": 2.5 if cls is None else 1.6, "shape": "hv"},
                    hovertemplate=f"{name} {label}: %{{x:.1f}} ms at p%{{customdata:.0f}}<extra></extra>",
                    customdata=y * 100,
                ),
                row=j // 2 + 1,
                col=j % 2 + 1,
            )
    for j, (key, label) in enumerate(METRICS):
        r, c = j // 2 + 1, j % 2 + 1
        if key in slo:
            # a trace, not a shape: on log axes plotly.js places shapes and annotations differently
            fig.add_trace(
                go.Scatter(
                    x=[slo[key] * 1e3] * 2,
                    y=[0, 1],
                    mode="lines+text",
                    text=[f" SLO {fmt_s(slo[key])}", ""],
                    textposition="top right",
                    textfont={"color": "#E45756"},
                    line={"color": "#E45756", "dash": "dash", "width": 2},
                    name=f"SLO {label}",
                    showlegend=False,
                    hovertemplate=f"{label} SLO {fmt_s(slo[key])}<extra></extra>",
                ),
                row=r,
                col=c,
            )
        fig.update_xaxes(type="log", title_text=f"{label} (ms, log)", range=ranges[key], row=r, col=c)
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="requests ≤ x" if c == 1 else None, row=r, col=c)
    base_layout(fig, height=640)
    fig.update_layout(
        legend={"title": {"text": "workload class "}, "y": 1.1, "yanchor": "bottom", "x": 0}, margin={"t": 90}
    )
    return fig


def goodput_rows(summaries: Sequence[Any], slo: Mapping[str, float] | None) -> list[dict[str, str]]:
    """Per class: completed, throughput, goodput and SLO attainment (from the map's summaries)."""
    rows = []
    for s in summaries:
        rows.append(
            {
                "class": s.workload_class,
                "completed": f"{s.completed:,}",
                "req/s": f"{s.request_throughput:.2f}",
                "output tok/s": f"{s.output_token_throughput:,.0f}",
                "goodput req/s": "–" if s.goodput is None else f"{s.goodput:.2f}",
                "SLO met": "–" if s.slo_attainment is None else f"{s.slo_attainment * 100:.1f}%",
                "TTFT p95": fmt_s(s.ttft.p95),
                "TPOT p95": fmt_s(s.tpot.p95),
                "E2E p95": fmt_s(s.e2e.p95),
            }
        )
    return rows
