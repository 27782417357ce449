"""View 1, the map: how latency propagates from the query through the stages to the response."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from bottleneck_map.dashboard.style import (
    GROUP_COLORS,
    base_layout,
    class_color,
    class_name,
    fmt_pct,
    fmt_s,
    stage_name,
)

ROOT = "query → response"


def _groups(bmap: Any) -> list[tuple[str, list[Any]]]:
    """Stage groups in flow order with their stages (only stages that took any time)."""
    order = list(GROUP_COLORS)
    by_group: dict[str, list[Any]] = {}
    for s in bmap.stages:
        if s.share and s.share > 0:
            by_group.setdefault(s.group, []).append(s)
    known = [g for g in order if g in by_group]
    extra = [g for g in by_group if g not in order]
    return [(g, by_group[g]) for g in known + extra]


def group_class(stages: list[Any]) -> str | None:
    """The class behind a group: the class of its largest stage (as the analyzer assigned it)."""
    top = max(stages, key=lambda s: s.share)
    return top.cls


def map_figure(bmap: Any) -> go.Figure:
    """An icicle read top-down and left to right: end-to-end latency, split into stage groups in
    the order a request meets them, then into stages. Width is share of summed E2E latency; colour
    is the bottleneck class the analyzer put behind each stage."""
    e2e = bmap.latency_for("all").e2e if bmap.latency_for("all") else None
    groups = _groups(bmap)
    ids, labels, parents, values, colors, texts, hovers = [], [], [], [], [], [], []
    total = sum(s.share for _, stages in groups for s in stages)
    ids.append("root")
    labels.append(ROOT)
    parents.append("")
    values.append(total * 100)
    colors.append("#EEF1F4")
    root_text = "end-to-end latency"
    if e2e is not None and e2e.p50 is not None:
        root_text += f": p50 {fmt_s(e2e.p50)} · p95 {fmt_s(e2e.p95)} over {e2e.count:,} requests"
    if bmap.top is not None:
        root_text += f"<br>top constraint: {class_name(bmap.top.cls)} ({fmt_pct(bmap.top.share_of_latency)} of latency)"
    texts.append(root_text)
    hovers.append(root_text)
    for i, (g, stages) in enumerate(groups):
        share = sum(s.share for s in stages)
        cls = group_class(stages)
        gid = f"g{i}:{g}"
        ids.append(gid)
        labels.append(f"{i + 1}. {g}")
        parents.append("root")
        values.append(share * 100)
        colors.append(class_color(cls))
        texts.append(f"{fmt_pct(share)} of latency<br>{class_name(cls)}")
        hovers.append(f"{g}: {fmt_pct(share)} of summed latency<br>class behind it: {class_name(cls)}")
        for s in stages:
            ids.append(f"{gid}/{s.stage}")
            labels.append(stage_name(s.stage))
            parents.append(gid)
            values.append(s.share * 100)
            colors.append(_lighter(class_color(s.cls)))
            texts.append(f"{fmt_pct(s.share)}<br>p50 {fmt_s(s.p50_s)} · p95 {fmt_s(s.p95_s)}")
            hovers.append(
                f"{stage_name(s.stage)}: {fmt_pct(s.share)} of summed latency<br>"
                f"p50 {fmt_s(s.p50_s)} · p95 {fmt_s(s.p95_s)} · p99 {fmt_s(s.p99_s)}<br>"
                f"in {s.requests_with_stage:,} requests<br>class: {class_name(s.cls)}"
            )
    fig = go.Figure(
        go.Icicle(
            ids=ids,
            labels=labels,
            parents=parents,
            values=values,
            branchvalues="total",
            sort=False,
            text=texts,
            texttemplate="<b>%{label}</b><br>%{text}",
            hovertext=hovers,
            hoverinfo="text",
            marker={"colors": colors, "line": {"color": "white", "width": 2}},
            tiling={"orientation": "v"},
            pathbar={"visible": False},
            insidetextfont={"size": 13},
            maxdepth=3,
        )
    )
    base_layout(fig, height=340)
    # text that cannot be read at 10 px is hidden (hover and the table below still have it)
    fig.update_layout(margin={"l": 4, "r": 4, "t": 4, "b": 4}, uniformtext={"minsize": 10, "mode": "hide"})
    return fig


def _lighter(hex_color: str, amount: float = 0.35) -> str:
    """Blend a colour towards white, so stages read as part of their group."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    r, g, b = (round(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02X}{g:02X}{b:02X}"


def stage_rows(bmap: Any) -> list[dict[str, Any]]:
    """The map as rows (flow order): stage, group, share, p50, p95, class; for the table beside it."""
    rows = []
    for g, stages in _groups(bmap):
        for s in stages:
            rows.append(
                {
                    "group": g,
                    "stage": stage_name(s.stage),
                    "share": s.share,
                    "p50": fmt_s(s.p50_s),
                    "p95": fmt_s(s.p95_s),
                    "cls": s.cls,
                }
            )
    return rows
