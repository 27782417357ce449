"""View 1, the map: how latency propagates from the query through the stages to the response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from dash import html

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


@dataclass(frozen=True)
class MapNode:
    """One box of the map: the root (end-to-end latency), a stage group, or a stage."""

    id: str
    parent: str  # "" for the root
    level: int  # 0 root, 1 group, 2 stage
    label: str
    share: float  # of summed end-to-end latency (the root: the sum of its groups)
    color: str
    text: str  # lines shown in the box
    hover: str  # lines shown on hover


def map_nodes(bmap: Any) -> list[MapNode]:
    """The map's boxes in flow order: end-to-end latency, split into stage groups in the order a
    request meets them, then into stages. Share is of summed E2E latency; colour is the bottleneck
    class the analyzer put behind each stage (a group takes its largest stage's)."""
    e2e = bmap.latency_for("all").e2e if bmap.latency_for("all") else None
    groups = _groups(bmap)
    total = sum(s.share for _, stages in groups for s in stages)
    root_text = ["end-to-end latency"]
    if e2e is not None and e2e.p50 is not None:
        root_text[0] += f": p50 {fmt_s(e2e.p50)} · p95 {fmt_s(e2e.p95)} over {e2e.count:,} requests"
    if bmap.top is not None:
        root_text.append(
            f"top constraint: {class_name(bmap.top.cls)} ({fmt_pct(bmap.top.share_of_latency)} of latency)"
        )
    nodes = [MapNode("root", "", 0, ROOT, total, "#EEF1F4", "\n".join(root_text), "\n".join(root_text))]
    for i, (g, stages) in enumerate(groups):
        share = sum(s.share for s in stages)
        cls = group_class(stages)
        gid = f"g{i}:{g}"
        nodes.append(
            MapNode(
                gid,
                "root",
                1,
                f"{i + 1}. {g}",
                share,
                class_color(cls),
                f"{fmt_pct(share)} of latency\n{class_name(cls)}",
                f"{g}: {fmt_pct(share)} of summed latency\nclass behind it: {class_name(cls)}",
            )
        )
        for s in stages:
            nodes.append(
                MapNode(
                    f"{gid}/{s.stage}",
                    gid,
                    2,
                    stage_name(s.stage),
                    s.share,
                    _lighter(class_color(s.cls)),
                    f"{fmt_pct(s.share)}\np50 {fmt_s(s.p50_s)} · p95 {fmt_s(s.p95_s)}",
                    f"{stage_name(s.stage)}: {fmt_pct(s.share)} of summed latency\n"
                    f"p50 {fmt_s(s.p50_s)} · p95 {fmt_s(s.p95_s)} · p99 {fmt_s(s.p99_s)}\n"
                    f"in {s.requests_with_stage:,} requests\nclass: {class_name(s.cls)}",
                )
            )
    return nodes


def map_figure(bmap: Any) -> go.Figure:
    """The map as a plotly icicle (the compare view's small maps)."""
    nodes = map_nodes(bmap)
    br = "<br>"
    fig = go.Figure(
        go.Icicle(
            ids=[n.id for n in nodes],
            labels=[n.label for n in nodes],
            parents=[n.parent for n in nodes],
            values=[n.share * 100 for n in nodes],
            branchvalues="total",
            sort=False,
            text=[n.text.replace("\n", br) for n in nodes],
            texttemplate="<b>%{label}</b><br>%{text}",
            hovertext=[n.hover.replace("\n", br) for n in nodes],
            hoverinfo="text",
            marker={"colors": [n.color for n in nodes], "line": {"color": "white", "width": 2}},
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


def map_icicle(bmap: Any, element_id: str = "map-graph") -> html.Div:
    """The map as HTML boxes (the map view): the same icicle as :func:`map_figure`, drawn by the
    browser's layout engine, so the first view needs no plotly.js (4.8 MB of script and about a
    second of CPU to start). Widths are shares; each box's title holds its hover text."""
    nodes = map_nodes(bmap)
    children: dict[str, list[MapNode]] = {}
    for n in nodes[1:]:
        children.setdefault(n.parent, []).append(n)

    def box(n: MapNode) -> html.Div:
        lines = n.text.split("\n")
        return html.Div(
            [html.B(n.label), *[html.Span(line) for line in lines]],
            className=f"bm-ice-node bm-ice-l{n.level}",
            title=n.hover,
            style={"background": n.color},
            **{"data-label": n.label, "data-share": f"{n.share:.6f}", "data-level": str(n.level)},
        )

    root = nodes[0]
    total = root.share or 1.0
    columns = []
    for g in children.get("root", []):
        stages = children.get(g.id, [])
        inner = g.share or 1.0
        columns.append(
            html.Div(
                [
                    box(g),
                    html.Div(
                        [
                            html.Div(box(s), className="bm-ice-cell", style={"flexGrow": s.share / inner})
                            for s in stages
                        ],
                        className="bm-ice-row",
                    ),
                ],
                className="bm-ice-col",
                style={"flexGrow": g.share / total},
            )
        )
    return html.Div(
        [box(root), html.Div(columns, className="bm-ice-row bm-ice-groups")],
        id=element_id,
        className="bm-ice",
    )


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
