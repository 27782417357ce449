"""View 4, request explorer: one request's waterfall of stages, aligned with the engine steps it was in."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from bottleneck_map.dashboard.style import GROUP_COLORS, PHASE_COLORS, base_layout, fmt_s

STAGE_ROWS = ["receive", "tokenize", "queue", "prefill", "decode", "streaming", "preempted"]
STAGE_COLORS = {**GROUP_COLORS, "receive": "#C9B8A8", "preempted": "#B22222"}
PREFILL_ROW = "steps: prefill"
DECODE_ROW = "steps: decode"


def waterfall_figure(timeline: Any) -> go.Figure:
    """Horizontal bars on a time axis in ms since arrival: lifecycle stages top-down in flow order,
    then one bar per engine step the request took part in (prefill chunks and decode steps on
    their own rows), so gaps between its steps (other sequences' work, host time) are visible."""
    fig = go.Figure()
    iv = timeline.intervals
    rows_used = [r for r in STAGE_ROWS if len(iv) and (iv["stage"] == r).any()]
    for stage in rows_used:
        sel = iv[iv["stage"] == stage]
        fig.add_trace(
            go.Bar(
                y=[stage] * len(sel),
                x=(sel["end_ms"] - sel["start_ms"]).tolist(),
                base=sel["start_ms"].tolist(),
                orientation="h",
                name=stage,
                marker={"color": STAGE_COLORS.get(stage, "#888")},
                customdata=sel[["start_ms", "end_ms"]].to_numpy(),
                hovertemplate=f"{stage}: %{{x:.2f}} ms (%{{customdata[0]:.2f}} → %{{customdata[1]:.2f}} ms)<extra></extra>",
                showlegend=False,
            )
        )
    st = timeline.steps
    for is_prefill, row in ((True, PREFILL_ROW), (False, DECODE_ROW)):
        sel = st[st["is_prefill"] == is_prefill] if len(st) else st
        if not len(sel):
            continue
        phase = "prefill" if is_prefill else "decode"
        fig.add_trace(
            go.Bar(
                y=[row] * len(sel),
                x=(sel["end_ms"] - sel["start_ms"]).tolist(),
                base=sel["start_ms"].tolist(),
                orientation="h",
                name=f"{phase} steps ({len(sel)})",
                marker={"color": PHASE_COLORS[phase], "line": {"width": 0.5, "color": "white"}},
                customdata=sel[["step_id", "query_len", "batch_size"]].to_numpy(),
                hovertemplate=(
                    "step %{customdata[0]}: %{x:.2f} ms<br>this request's tokens: %{customdata[1]}"
                    "<br>sequences in the batch: %{customdata[2]}<extra></extra>"
                ),
                showlegend=False,
            )
        )
    categories = rows_used + [r for r in (PREFILL_ROW, DECODE_ROW) if len(st) and r in _rows(st)]
    title = f"Request {timeline.request_id}" + (f" ({timeline.workload_class})" if timeline.workload_class else "")
    if timeline.stages_s:
        e2e = sum(timeline.stages_s.values())
        title += f": E2E {fmt_s(e2e)}, {len(st)} engine steps"
    base_layout(fig, height=140 + 34 * max(len(categories), 1), title=title)
    fig.update_layout(barmode="overlay", bargap=0.25)
    fig.update_yaxes(categoryorder="array", categoryarray=categories[::-1], title_text=None)
    fig.update_xaxes(title_text="ms since the request arrived", rangemode="tozero")
    return fig


def _rows(steps: Any) -> set[str]:
    rows = set()
    if (steps["is_prefill"]).any():
        rows.add(PREFILL_ROW)
    if (~steps["is_prefill"].astype(bool)).any():
        rows.add(DECODE_ROW)
    return rows
