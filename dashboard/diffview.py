"""The analyzer's diff of two maps (``diff_maps``), rendered as a table; the dashboard computes no diff itself."""

from __future__ import annotations

from typing import Any

from dash import html

from bottleneck_map.dashboard.style import class_name, fmt_pct, fmt_s

SECTIONS = (
    ("latency", "Latency percentiles"),
    ("throughput", "Throughput"),
    ("stage", "Stages"),
    ("class", "Bottleneck classes"),
)
VERDICT_CLASS = {"better": "bm-better", "worse": "bm-worse", "same": "bm-same", "n/a": "bm-same"}


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name.endswith("_s"):
        return fmt_s(value)
    if name.endswith("_share"):
        return fmt_pct(value)
    return f"{value:,.3g}"


def _label(section: str, name: str) -> str:
    if section == "class":
        return class_name(name.removesuffix("_share")) + " share"
    if section == "latency":
        metric, p, _ = name.split("_", 2)
        return f"{metric.upper()} {p}"
    return name.removesuffix("_s").replace("_", " ")


def diff_table(before: Any, after: Any, *, show_same: bool = False) -> html.Div:
    """Rows of the analyzer's MapDiff grouped by section: before, after, change, better/worse."""
    from bottleneck_map.analyzer.diff import diff_maps

    d = diff_maps(before, after)
    head = html.P(
        [
            "Top verdict: ",
            html.B(class_name(d.top_before)),
            " → ",
            html.B(class_name(d.top_after)),
            ". Changes within 2% are shown as same."
            if show_same
            else ". Rows that changed by less than 2% are hidden.",
        ]
    )
    tables: list[Any] = [head]
    for section, title in SECTIONS:
        rows = [r for r in d.rows if r.section == section and (show_same or r.verdict in ("better", "worse"))]
        if not rows:
            continue
        body = [
            html.Tr(
                [
                    html.Td(_label(section, r.name)),
                    html.Td(_fmt(r.name, r.before), className="bm-num"),
                    html.Td(_fmt(r.name, r.after), className="bm-num"),
                    html.Td("–" if r.rel is None else f"{r.rel * 100:+.0f}%", className="bm-num"),
                    html.Td(r.verdict, className=VERDICT_CLASS.get(r.verdict, "")),
                ]
            )
            for r in rows
        ]
        tables.append(html.H4(title))
        tables.append(
            html.Table(
                [
                    html.Thead(
                        html.Tr(
                            [html.Th(""), *(html.Th(h, className="bm-num") for h in ("A", "B", "change")), html.Th("")]
                        )
                    ),
                    html.Tbody(body),
                ],
                className="bm-table bm-diff",
            )
        )
    if len(tables) == 1:
        tables.append(html.P("No change beyond 2%.", className="bm-help"))
    return html.Div(tables, id="diff-table")
