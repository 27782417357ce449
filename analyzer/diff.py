"""Compare two bottleneck maps: per stage, per class and per percentile, what got better or worse.

A figure counts as changed only beyond noise: its change must exceed a relative threshold
(:data:`NOISE_REL` of the before value), an absolute one (:data:`NOISE_ABS` per unit) and, for
latency percentiles, twice the sampling error of the two percentiles (from each map's own spread
of percentiles and request count: ``sqrt(p (1 - p) / n)`` times the local slope of the quantile
function). Stage and class rows are judged by their mean time per completed request, not their share:
a share can shrink while its time grows. Warnings name what makes the runs hard to compare: a
different workload or model, device peaks measured far apart (a busier machine), or few requests.
Stage and class times must also move by :data:`E2E_FLOOR` of the mean E2E to count, and a
throughput by twice its counting error (``1/sqrt(completed)`` of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bottleneck_map.analyzer.result import BottleneckMap, Percentiles, _Serial

# A change is noise unless it exceeds all of: this fraction of the before value, the absolute
# floor of its unit, and (latency percentiles) twice the two percentiles' combined sampling error.
NOISE_REL = 0.10
NOISE_ABS = {"s": 0.005, "ratio": 0.02, "1/s": 0.0}
SAMPLING_SIGMAS = 2.0
# Device peaks (measured at each run's start on a CPU) this far apart mean the machine differed.
PEAKS_APART = 0.15
FEW_REQUESTS = 30
# Stage and class times that move by less than this fraction of the mean E2E do not move latency.
E2E_FLOOR = 0.01
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


@dataclass
class DiffRow(_Serial):
    section: str  # "latency" | "throughput" | "stage" | "class"
    name: str
    before: float | None
    after: float | None
    delta: float | None
    rel: float | None
    verdict: str  # "better" | "worse" | "same" | "n/a"
    unit: str = ""  # "s", "ratio", "1/s"
    noise: float | None = None  # the smallest |delta| that counted as a change
    share_before: float | None = None  # stage / class rows: share of latency, for reading
    share_after: float | None = None


@dataclass
class MapDiff(_Serial):
    before: str
    after: str
    top_before: str | None
    top_after: str | None
    rows: list[DiffRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.to_dict() for r in self.rows])


def _row(
    section: str,
    name: str,
    a: float | None,
    b: float | None,
    lower_is_better: bool = True,
    unit: str = "",
    sampling: float = 0.0,
    floor: float = 0.0,
) -> DiffRow:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return DiffRow(section, name, a, b, None, None, "n/a", unit)
    delta = b - a
    rel = delta / abs(a) if abs(a) > NOISE_ABS.get(unit, 0.0) and a else None
    noise = max(NOISE_REL * abs(a), NOISE_ABS.get(unit, 0.0), SAMPLING_SIGMAS * sampling, floor)
    if abs(delta) <= noise or abs(delta) < 1e-12:
        verdict = "same"
    else:
        improved = delta < 0 if lower_is_better else delta > 0
        verdict = "better" if improved else "worse"
    return DiffRow(section, name, a, b, delta, rel, verdict, unit, noise)


def percentile_error(p: Percentiles, q: str) -> float:
    """Sampling error of percentile ``q`` of ``p``: ``sqrt(q (1 - q) / n) * dx/dq`` with the slope
    of the quantile function taken from the neighbouring percentiles (0 when it cannot be told)."""
    n = p.count or 0
    pts = [(0.5, p.p50), (0.9, p.p90), (0.95, p.p95), (0.99, p.p99), (1.0, p.max)]
    pts = [(x, v) for x, v in pts if v is not None]
    x = _QUANTILES[q]
    if n < 2 or len(pts) < 2:
        return 0.0
    i = next((k for k, (xx, _) in enumerate(pts) if xx == x), None)
    if i is None:
        return 0.0
    lo, hi = pts[max(i - 1, 0)], pts[min(i + 1, len(pts) - 1)]
    if hi[0] == lo[0]:
        return 0.0
    slope = max(hi[1] - lo[1], 0.0) / (hi[0] - lo[0])
    return math.sqrt(x * (1 - x) / n) * slope


def _warnings(before: BottleneckMap, after: BottleneckMap) -> list[str]:
    out = []
    wa, wb = before.workload or {}, after.workload or {}
    if wa != wb:
        keys = sorted(k for k in set(wa) | set(wb) if wa.get(k) != wb.get(k))
        shown = ", ".join(f"{k}: {wa.get(k)!r} -> {wb.get(k)!r}" for k in keys[:4])
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        out.append(f"the workloads differ ({shown}{more}): changes may come from the load, not the system")
    if (before.model or None) != (after.model or None):
        out.append(f"the models differ ({before.model} -> {after.model})")
    for what, a, b in (
        ("bandwidth", before.device.peak_bandwidth_bytes_per_s, after.device.peak_bandwidth_bytes_per_s),
        ("FLOP/s", before.device.peak_flops, after.device.peak_flops),
    ):
        if a and b and abs(b - a) > PEAKS_APART * max(a, b):
            unit = "GB/s" if what == "bandwidth" else "GFLOP/s"
            out.append(
                f"peak {what} {a / 1e9:.3g} -> {b / 1e9:.3g} {unit} ({before.device.source} -> "
                f"{after.device.source}): the machine ran differently (other load, another device), so timings "
                "differ with it"
            )
    la, lb = before.latency_for("all"), after.latency_for("all")
    n = min(la.completed if la else 0, lb.completed if lb else 0)
    if n < FEW_REQUESTS:
        out.append(f"only {n} completed requests in the smaller run: percentiles (p99 above all) are rough")
    return out


def _mean_e2e(m: BottleneckMap) -> float | None:
    """Mean E2E of completed requests (s): a class's mean time per request is its share of it."""
    lat = m.latency_for("all")
    n = lat.completed if lat else 0
    return sum(s.total_s for s in m.stages) / n if n else None


def diff_maps(before: BottleneckMap, after: BottleneckMap) -> MapDiff:
    out = MapDiff(
        before.bundle, after.bundle, before.top.cls if before.top else None, after.top.cls if after.top else None
    )
    out.warnings = _warnings(before, after)
    la, lb = before.latency_for("all"), after.latency_for("all")
    if la is not None and lb is not None:
        for metric in ("ttft", "tpot", "itl", "e2e"):
            pa_, pb_ = getattr(la, metric), getattr(lb, metric)
            for p in ("p50", "p90", "p95", "p99"):
                err = math.hypot(percentile_error(pa_, p), percentile_error(pb_, p))
                out.rows.append(
                    _row("latency", f"{metric}_{p}_s", getattr(pa_, p), getattr(pb_, p), unit="s", sampling=err)
                )
        for name in ("request_throughput", "output_token_throughput", "goodput"):
            a, b = getattr(la, name), getattr(lb, name)
            err = math.hypot(*(x / math.sqrt(n) if x and n else 0.0 for x, n in ((a, la.completed), (b, lb.completed))))
            out.rows.append(_row("throughput", name, a, b, lower_is_better=False, unit="1/s", sampling=err))
    # Stages and classes: mean time per completed request (a share can shrink while its time grows).
    ea, eb = _mean_e2e(before), _mean_e2e(after)
    floor = E2E_FLOOR * max(ea or 0.0, eb or 0.0)
    sa = {s.stage: s for s in before.stages}
    for s in after.stages:
        a = sa.get(s.stage)
        row = _row("stage", f"{s.stage}_mean_s", a.mean_s if a else None, s.mean_s, unit="s", floor=floor)
        row.share_before, row.share_after = (a.share if a else None), s.share
        out.rows.append(row)
        out.rows.append(_row("stage", f"{s.stage}_p95_s", a.p95_s if a else None, s.p95_s, unit="s", floor=floor))
    va = {v.cls: v for v in before.verdicts if v.cls != "balanced"}
    vb = {v.cls: v for v in after.verdicts if v.cls != "balanced"}
    for cls in sorted(set(va) | set(vb)):
        a, b = va.get(cls), vb.get(cls)
        row = _row(
            "class",
            f"{cls}_mean_s",
            a.share_of_latency * ea if a and ea is not None else None,
            b.share_of_latency * eb if b and eb is not None else None,
            unit="s",
            floor=floor,
        )
        row.share_before, row.share_after = (a.share_of_latency if a else None), (b.share_of_latency if b else None)
        out.rows.append(row)
    return out


def _fmt(v: float | None, unit: str) -> str:
    """A figure rounded for people: ms under a second, percentages for shares, 3 significant digits."""
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.3g} ms" if abs(v) < 0.9995 else f"{v:.3g} s"
    if unit == "ratio":
        return f"{100 * v:.1f}%"
    if unit == "1/s":
        return f"{v:.3g}/s"
    return f"{v:.3g}"


def _change(r: DiffRow) -> str:
    """Relative change when the before value is large enough to divide by, else the absolute delta."""
    if r.delta is None:
        return ""
    if r.rel is not None and abs(r.rel) < 10:
        return f"{100 * r.rel:+.0f}%"
    if r.rel is not None and r.before:
        return f"x{r.after / r.before:.3g}"
    sign = "+" if r.delta >= 0 else "-"
    return sign + _fmt(abs(r.delta), r.unit)


def _with_share(r: DiffRow, v: float | None, share: float | None) -> str:
    text = _fmt(v, r.unit)
    return text if share is None else f"{text} ({100 * share:.0f}%)"


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
        for col in ("before", "after", "change"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            before = _with_share(r, r.before, r.share_before)
            after = _with_share(r, r.after, r.share_after)
            table.add_row(r.verdict, r.section, r.name, before, after, _change(r))
        if not rows:
            table.add_row("no change beyond noise", "", "", "", "", "")
        return table

    head = Text(f"top verdict: {d.top_before} -> {d.top_after}")
    note = Text(
        f"changes count beyond noise: {100 * NOISE_REL:.0f}% of the before value, {NOISE_ABS['s'] * 1e3:g} ms, "
        f"and {SAMPLING_SIGMAS:g}x the percentiles' sampling error; stage and class rows are mean time per "
        "request (share of latency in brackets)",
        style="dim",
    )
    warn = [Text(f"warning: {w}", style="yellow") for w in d.warnings]
    return Group(head, *warn, note, Fit([lambda: layout(False), lambda: layout(True)]))


def render_diff(d: MapDiff, width: int = 100) -> str:
    """:func:`diff_view` as plain text ``width`` columns wide."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False, highlight=False).print(diff_view(d))
    return buf.getvalue()
