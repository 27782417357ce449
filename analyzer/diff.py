"""Compare two bottleneck maps: per stage, per class and per percentile, what got better or worse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bottleneck_map.analyzer.result import BottleneckMap, _Serial

# Relative change below this is reported as "same".
SAME_WITHIN = 0.02


@dataclass
class DiffRow(_Serial):
    section: str  # "latency" | "throughput" | "stage" | "class"
    name: str
    before: float | None
    after: float | None
    delta: float | None
    rel: float | None
    verdict: str  # "better" | "worse" | "same" | "n/a"


@dataclass
class MapDiff(_Serial):
    before: str
    after: str
    top_before: str | None
    top_after: str | None
    rows: list[DiffRow] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.to_dict() for r in self.rows])


def _row(section: str, name: str, a: float | None, b: float | None, lower_is_better: bool = True) -> DiffRow:
    if a is None or b is None:
        return DiffRow(section, name, a, b, None, None, "n/a")
    delta = b - a
    rel = delta / abs(a) if a else (0.0 if not delta else None)
    if rel is not None and abs(rel) < SAME_WITHIN or (rel is None and abs(delta) < 1e-12):
        verdict = "same"
    else:
        improved = delta < 0 if lower_is_better else delta > 0
        verdict = "better" if improved else "worse"
    return DiffRow(section, name, a, b, delta, rel, verdict)


def diff_maps(before: BottleneckMap, after: BottleneckMap) -> MapDiff:
    out = MapDiff(
        before.bundle, after.bundle, before.top.cls if before.top else None, after.top.cls if after.top else None
    )
    la, lb = before.latency_for("all"), after.latency_for("all")
    if la is not None and lb is not None:
        for metric in ("ttft", "tpot", "itl", "e2e"):
            pa_, pb_ = getattr(la, metric), getattr(lb, metric)
            for p in ("p50", "p90", "p95", "p99"):
                out.rows.append(_row("latency", f"{metric}_{p}_s", getattr(pa_, p), getattr(pb_, p)))
        for name in ("request_throughput", "output_token_throughput", "goodput"):
            out.rows.append(_row("throughput", name, getattr(la, name), getattr(lb, name), lower_is_better=False))
    sa = {s.stage: s for s in before.stages}
    for s in after.stages:
        a = sa.get(s.stage)
        out.rows.append(_row("stage", f"{s.stage}_share", a.share if a else None, s.share))
        out.rows.append(_row("stage", f"{s.stage}_p95_s", a.p95_s if a else None, s.p95_s))
    va = {v.cls: v for v in before.verdicts}
    vb = {v.cls: v for v in after.verdicts}
    for cls in sorted(set(va) | set(vb) - {"balanced"}):
        if cls == "balanced":
            continue
        a, b = va.get(cls), vb.get(cls)
        out.rows.append(
            _row("class", f"{cls}_share", a.share_of_latency if a else None, b.share_of_latency if b else None)
        )
    return out


def diff_view(d: MapDiff) -> Any:
    """The changes that are not "same", as a rich renderable that fits the console's width."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from bottleneck_map.terminal import Fit

    rows = [r for r in d.rows if r.verdict not in ("same", "n/a")]

    def layout(fold: bool) -> Table:
        table = Table(pad_edge=False, box=None, show_header=bool(rows))
        table.add_column("verdict", no_wrap=True)
        table.add_column("section", no_wrap=True)
        table.add_column("figure", no_wrap=not fold, overflow="fold")
        for col in ("before", "after", "change %"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            rel = "" if r.rel is None else f"{100 * r.rel:+.0f}%"
            table.add_row(r.verdict, r.section, r.name, f"{r.before:.4g}", f"{r.after:.4g}", rel)
        if not rows:
            table.add_row("no change beyond 2%", "", "", "", "", "")
        return table

    head = Text(f"top verdict: {d.top_before} -> {d.top_after}")
    return Group(head, Fit([lambda: layout(False), lambda: layout(True)]))


def render_diff(d: MapDiff, width: int = 100) -> str:
    """:func:`diff_view` as plain text ``width`` columns wide."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False, highlight=False).print(diff_view(d))
    return buf.getvalue()
