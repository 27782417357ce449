"""View 2, the timeline: stage shares and verdicts per window, engine and hardware series on one time axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bottleneck_map.dashboard.series import HardwareFrame, SampleEngineFrame
from bottleneck_map.dashboard.style import GROUP_COLORS, base_layout, class_color, class_name

ROW_PX = 150
THROTTLE_FILL = "rgba(238, 202, 59, 0.35)"
MAX_SPANS = 200

_ENGINE_ROWS = [
    ("batch and queue", [("batch_size", "batch size"), ("num_running", "running"), ("num_waiting", "waiting")], None),
    ("KV-cache usage and preemptions", [("kv_usage", "KV usage")], [("num_preempted", "preemptions")]),
    ("tokens per step", [("prefill_tokens", "prefill tokens"), ("decode_tokens", "decode tokens (seqs)")], None),
]
_ENGINE_COLORS = {
    "batch_size": "#4C78A8",
    "num_running": "#2A9D8F",
    "num_waiting": "#E45756",
    "kv_usage": "#F58518",
    "num_preempted": "#B22222",
    "prefill_tokens": "#4C78A8",
    "decode_tokens": "#2A9D8F",
}
# Engine rows drawn from the samples when there are no steps: (title, primary series, secondary series).
_SAMPLE_ROWS = [
    ("running (the batch) and waiting, per instance", [("num_running", "running"), ("num_waiting", "waiting")], []),
    ("KV-cache usage and preemptions, per instance", [("kv_usage", "KV usage")], [("num_preempted", "preemptions")]),
    (
        "prompt and generation tokens per second, per instance",
        [("prompt_tokens_per_s", "prompt tok/s"), ("generation_tokens_per_s", "generation tok/s")],
        [],
    ),
]
_SAMPLE_DASH = {"num_waiting": "dot", "prompt_tokens_per_s": "dot"}
_HW_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#9D755D", "#2A9D8F", "#666666"]


def timeline_figure(
    windows: Sequence[Any],
    window_s: float,
    engine: pd.DataFrame,
    hardware: HardwareFrame,
    *,
    x_range: tuple[float, float] | None = None,
    sample_engine: SampleEngineFrame | None = None,
) -> go.Figure:
    """Every panel shares one x axis (seconds since run start): zooming one zooms all.

    ``windows`` are the analyzer's WindowVerdicts; ``engine`` and ``hardware.frame`` are
    already aggregated (see :func:`bottleneck_map.dashboard.series.bucket`). Without steps
    (``engine`` empty), the engine panels come from ``sample_engine``, the engine's own series
    in the samples, one line per instance.
    """
    rows: list[tuple[str, bool]] = []  # (title, has secondary y)
    if windows:
        rows += [("request time by stage group, per window", False), ("verdict per window (from class shares)", False)]
    if len(engine):
        rows += [(title, sec is not None) for title, _, sec in _ENGINE_ROWS]
    sample_rows = []
    if not len(engine) and sample_engine is not None and len(sample_engine):
        sample_rows = [row for row in _SAMPLE_ROWS if any(k in sample_engine.series for k, _ in row[1] + row[2])]
        rows += [(title, bool(sec)) for title, _, sec in sample_rows]
    hw_panels = [p for p in ("gpu_activity", "pcie", "power", "clock", "cpu") if p in hardware.groups]
    rows += [(_hw_title(p), False) for p in hw_panels]
    if not rows:
        fig = go.Figure()
        fig.add_annotation(text="This bundle has no windows, steps or samples to plot.", showarrow=False)
        return base_layout(fig, height=200)
    heights = [0.55 if t.startswith("verdict") else 1.0 for t, _ in rows]
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.06, 0.35 / len(rows)),
        subplot_titles=[t for t, _ in rows],
        row_heights=heights,
        specs=[[{"secondary_y": sec}] for _, sec in rows],
    )
    r = 1
    if windows:
        _stage_share_rows(fig, windows, window_s, r)
        for t in fig.data:
            t.legend = "legend" if t.legendgroup == "stages" else "legend2"
        r += 2
    if len(engine):
        for _title, primary, secondary in _ENGINE_ROWS:
            for col, label in primary:
                if col in engine and engine[col].notna().any():
                    y = engine[col] * 100 if col == "kv_usage" else engine[col]
                    fig.add_trace(_line(engine["t_s"], y, label, _ENGINE_COLORS[col], _legend(r)), row=r, col=1)
            for col, label in secondary or []:
                if col in engine and engine[col].notna().any():
                    hit = engine[engine[col] > 0]
                    fig.add_trace(
                        go.Scattergl(
                            x=hit["t_s"],
                            y=hit[col],
                            name=label,
                            mode="markers",
                            marker={
                                "color": _ENGINE_COLORS[col],
                                "symbol": "x-thin",
                                "size": 7,
                                "line": {"width": 1.5, "color": _ENGINE_COLORS[col]},
                            },
                            legend=_legend(r),
                        ),
                        row=r,
                        col=1,
                        secondary_y=True,
                    )
            if secondary:
                fig.update_yaxes(title_text="KV %", range=[0, 105], row=r, col=1, secondary_y=False)
                counts = engine["num_preempted"] if "num_preempted" in engine else pd.Series(dtype=float)
                fig.update_yaxes(
                    title_text="preempted",
                    row=r,
                    col=1,
                    secondary_y=True,
                    showgrid=False,
                    visible=bool((counts > 0).any()),
                    **count_axis(counts.max() if len(counts) else 0),
                )
            r += 1
    for _title, primary, secondary in sample_rows:
        _sample_engine_row(fig, sample_engine, primary, secondary, r)
        r += 1
    clock_row = r
    for panel in hw_panels:
        frame = hardware.frame
        for i, (label, unit) in enumerate(hardware.groups[panel]):
            part = frame[["t_s", label]].dropna()  # sources sample at their own instants
            y = part[label]
            if unit == "ratio":
                y = y * 100
            elif unit == "Hz" or unit == "bytes/s":
                y = y / 1e9
            fig.add_trace(_line(part["t_s"], y, label, _HW_COLORS[i % len(_HW_COLORS)], _legend(r)), row=r, col=1)
        unit = hardware.groups[panel][0][1]
        fig.update_yaxes(
            title_text={"ratio": "%", "Hz": "GHz", "bytes/s": "GB/s", "W": "W"}.get(unit, unit), row=r, col=1
        )
        if panel == "clock":
            clock_row = r
        if panel in ("power", "clock"):
            for x0, x1 in _merge_spans(hardware.throttle):
                fig.add_vrect(x0=x0, x1=x1, fillcolor=THROTTLE_FILL, line_width=0, layer="below", row=r, col=1)
        r += 1
    if hardware.throttle and "clock" in hardware.groups:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker={"symbol": "square", "size": 12, "color": THROTTLE_FILL},
                name="throttled (power/thermal)",
                legend=_legend(clock_row),
            )
        )
    base_layout(fig, height=ROW_PX * len(rows) + 80)
    fig.update_layout(
        barmode="stack", bargap=0, hovermode="x unified", uirevision="timeline", margin={"t": 40, "r": 210}
    )
    for k in range(1, len(rows) + 1):
        top = fig.get_subplot(k, 1).yaxis.domain[1]
        fig.update_layout(
            {
                _legend(k): {
                    "x": 1.01,
                    "xanchor": "left",
                    "y": top,
                    "yanchor": "top",
                    "orientation": "v",
                    "font": {"size": 11},
                    "bgcolor": "rgba(255,255,255,0)",
                    "tracegroupgap": 2,
                }
            }
        )
    fig.update_annotations(font_size=12, x=0, xanchor="left")
    fig.update_xaxes(title_text="seconds since run start", row=len(rows), col=1)
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig


def _sample_engine_row(
    fig: go.Figure,
    sample: SampleEngineFrame,
    primary: list[tuple[str, str]],
    secondary: list[tuple[str, str]],
    r: int,
) -> None:
    """One panel of engine series from the samples: a line per series and instance (colour = instance)."""
    frame = sample.frame
    for i, inst in enumerate(sample.instances):
        color = _HW_COLORS[i % len(_HW_COLORS)]
        for key, label in primary:
            col = SampleEngineFrame.column(key, inst)
            if col not in frame:
                continue
            part = frame[["t_s", col]].dropna()  # instances are scraped at their own instants
            y = part[col] * 100 if key == "kv_usage" else part[col]
            line = _line(part["t_s"], y, f"{label} {inst}", color, _legend(r))
            line.line.dash = _SAMPLE_DASH.get(key, "solid")
            fig.add_trace(line, row=r, col=1)
        for key, label in secondary:
            col = SampleEngineFrame.column(key, inst)
            if col not in frame:
                continue
            hit = frame[frame[col] > 0]
            if hit.empty:  # a counter that never moved draws nothing
                continue
            fig.add_trace(
                go.Scattergl(
                    x=hit["t_s"],
                    y=hit[col],
                    name=f"{label} {inst}",
                    mode="markers",
                    marker={"color": color, "symbol": "x-thin", "size": 7, "line": {"width": 1.5, "color": color}},
                    legend=_legend(r),
                ),
                row=r,
                col=1,
                secondary_y=True,
            )
    keys = [k for k, _ in primary]
    if "kv_usage" in keys:
        fig.update_yaxes(title_text="KV %", range=[0, 105], row=r, col=1, secondary_y=False)
    elif "num_running" in keys:
        fig.update_yaxes(title_text="requests", rangemode="tozero", row=r, col=1)
    else:
        fig.update_yaxes(title_text="tokens/s", rangemode="tozero", row=r, col=1)
    if secondary:
        cols = [
            c for c in (SampleEngineFrame.column(k, i) for k, _ in secondary for i in sample.instances) if c in frame
        ]
        shown = any(bool((frame[c] > 0).any()) for c in cols)
        top = max((frame[c].max() for c in cols), default=0)
        fig.update_yaxes(
            title_text="preempted", row=r, col=1, secondary_y=True, showgrid=False, visible=shown, **count_axis(top)
        )


def count_axis(top: float) -> dict[str, Any]:
    """Axis settings for a count: whole-number ticks from 0, about four of them (not 0.522, 1.045)."""
    top = 0.0 if top is None or pd.isna(top) else float(top)  # no rows: NaN
    return {"rangemode": "tozero", "tick0": 0, "dtick": max(1, math.ceil(top / 4)), "tickformat": ",d"}


def _hw_title(panel: str) -> str:
    return {
        "gpu_activity": "GPU: DRAM bandwidth, SM occupancy, tensor activity (%)",
        "pcie": "PCIe TX / RX (GB/s)",
        "power": "power (W), throttling shaded",
        "clock": "SM clock (GHz), throttling shaded",
        "cpu": "host and engine-process CPU (%)",
    }[panel]


def _legend(row: int) -> str:
    """Each panel has its own legend beside it."""
    return "legend" if row == 1 else f"legend{row}"


def _line(x: Any, y: Any, name: str, color: str, legend: str) -> go.Scattergl:
    return go.Scattergl(x=x, y=y, name=name, mode="lines", line={"color": color, "width": 1.4}, legend=legend)


def _stage_share_rows(fig: go.Figure, windows: Sequence[Any], window_s: float, r: int) -> None:
    # one flat step per window, aligned with the verdict band below
    edges = [w.start_s for w in windows] + [windows[-1].end_s]
    groups = [g for g in GROUP_COLORS if any(w.stage_share.get(g) for w in windows)]
    for g in groups:
        values = [100 * (w.stage_share.get(g) or 0.0) for w in windows]
        fig.add_trace(
            go.Scatter(
                x=edges,
                y=values + values[-1:],
                name=g,
                mode="lines",
                stackgroup="share",
                line={"width": 0.5, "color": GROUP_COLORS[g], "shape": "hv"},
                legendgroup="stages",
                hovertemplate=f"{g}: %{{y:.0f}}% of the stage time placed in this window<extra></extra>",
            ),
            row=r,
            col=1,
        )
    fig.update_yaxes(title_text="% of stage time", range=[0, 100], row=r, col=1)
    seen: set[str] = set()
    for cls in dict.fromkeys(w.cls for w in windows):
        ws = [w for w in windows if w.cls == cls]
        fig.add_trace(
            go.Bar(
                x=[(w.start_s + w.end_s) / 2 for w in ws],
                y=[1] * len(ws),
                width=[max(w.end_s - w.start_s, 1e-9) for w in ws],
                name=class_name(cls),
                marker={"color": class_color(cls), "line": {"width": 0}},
                legendgroup="verdicts",
                customdata=[[w.confidence, w.index, 100 * _class_share(w)] for w in ws],
                hovertemplate=(
                    f"window %{{customdata[1]}}: {class_name(cls)} (confidence %{{customdata[0]:.2f}})"
                    "<br>top class share of attributed time: %{customdata[2]:.0f}%<extra></extra>"
                ),
                showlegend=cls not in seen,
            ),
            row=r + 1,
            col=1,
        )
        seen.add(cls)
    fig.update_yaxes(visible=False, range=[0, 1], row=r + 1, col=1)


def _class_share(w: Any) -> float:
    """The largest class share of the window (the class its verdict weighs); 0 when unknown."""
    shares = {c: v for c, v in (getattr(w, "class_share", None) or {}).items() if c != "unattributed"}
    return max(shares.values(), default=0.0)


def _merge_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most MAX_SPANS shaded spans: neighbours closer than the gap are merged."""
    spans = sorted(spans)
    if len(spans) <= MAX_SPANS:
        return list(spans)
    total = spans[-1][1] - spans[0][0]
    gap = total / MAX_SPANS
    merged = [spans[0]]
    for a, b in spans[1:]:
        if a - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged
