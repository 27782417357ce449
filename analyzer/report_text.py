"""The terminal summary a person reads in ten seconds: verdict, evidence, the map, percentiles, what to change."""

from __future__ import annotations

import io
import os

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bottleneck_map.analyzer.result import STAGE_GROUPS, BottleneckMap
from bottleneck_map.terminal import Fit

_BAR = 16


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _headline(m: BottleneckMap) -> Text:
    top = m.top
    if top is None:
        return Text("no verdict: the bundle has no finished requests", style="bold yellow")
    label = top.cls.replace("_", " ")
    t = Text()
    if top.cls == "balanced" and top.confidence < 0.5:
        t.append("No confident verdict", style="bold yellow")
        if any(e.metric.endswith("_contradicted") for e in top.evidence):
            t.append(
                f": a class large enough to fire is contradicted by its own numbers (confidence {top.confidence:.2f})"
            )
        else:
            t.append(
                f": no class reaches its threshold and the evidence is incomplete (confidence {top.confidence:.2f})"
            )
    elif top.cls == "balanced":
        t.append("Balanced", style="bold green")
        t.append(f": no single constraint dominates (confidence {top.confidence:.2f})")
    else:
        t.append(f"Bottleneck: {label}", style="bold red")
        t.append(f"  {_pct(top.share_of_latency)} of latency, confidence {top.confidence:.2f}")
        if top.requests_affected:
            t.append(f", {top.requests_affected} requests affected")
    return t


def _hanging(label: Text | str, lines: list[str]) -> Table:
    """``label`` before each line; a line that wraps continues under its own start, not at column 0."""
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column()
    for line in lines:
        grid.add_row(label, line)
    return grid


def _evidence(m: BottleneckMap) -> Group:
    if m.top is None:
        return Group()
    parts = [_hanging("  - ", [e.text for e in m.top.evidence])]
    if m.top.recommendation:
        parts.append(_hanging(Text("  Fix: ", style="bold"), [m.top.recommendation]))
    return Group(*parts, Text(""))


def _map_table(m: BottleneckMap, bar: int = _BAR, fold: bool = False) -> Table:
    """The map; ``bar`` characters for a 100% share (0: no bar column), ``fold``: class names may fold."""
    tab = Table(title="Latency map (query -> response)", title_justify="left", pad_edge=False, box=None)
    tab.add_column("stage", no_wrap=True)
    tab.add_column("share", justify="right", no_wrap=True)
    if bar:
        tab.add_column("", no_wrap=True, min_width=bar)
    tab.add_column("p50 ms", justify="right", no_wrap=True)
    tab.add_column("p95 ms", justify="right", no_wrap=True)
    tab.add_column("class behind it", no_wrap=not fold, overflow="fold")
    by_group: dict[str, list] = {g: [] for g in STAGE_GROUPS}
    for s in m.stages:
        by_group[s.group].append(s)
    for g, members in by_group.items():
        share = sum(s.share for s in members)
        cls = max(members, key=lambda s: s.share).cls if members else None
        bars = [Text("#" * round(share * bar), style="cyan")] if bar else []
        tab.add_row(Text(g, style="bold"), _pct(share), *bars, "", "", cls or "-")
        for s in members:
            if s.total_s <= 0 or len(members) == 1:
                continue
            bars = [Text("#" * round(s.share * bar), style="dim")] if bar else []
            tab.add_row(f"  {s.stage}", _pct(s.share), *bars, _ms(s.p50_s), _ms(s.p95_s), s.cls or "-")
    return tab


def _fitted_map(m: BottleneckMap) -> Fit:
    """The map at the console's width: a shorter bar, then none, then folded class names."""
    return Fit([lambda b=b, f=f: _map_table(m, b, f) for b, f in ((_BAR, False), (8, False), (0, False), (0, True))])


def _percentile_table(m: BottleneckMap) -> Table:
    lat = m.latency_for("all")
    tab = Table(title="Latency, ms (as vllm bench serve)", title_justify="left", pad_edge=False, box=None)
    tab.add_column("metric", no_wrap=True)
    for p in ("mean", "p50", "p90", "p95", "p99"):
        tab.add_column(p, justify="right", no_wrap=True)
    if lat is not None:
        for name, pct in (("TTFT", lat.ttft), ("TPOT", lat.tpot), ("ITL", lat.itl), ("E2E", lat.e2e)):
            tab.add_row(name, *(_ms(getattr(pct, p)) for p in ("mean", "p50", "p90", "p95", "p99")))
    return tab


def _class_table(m: BottleneckMap, stacked: bool = False, fold: bool = False) -> Table:
    """Per class; ``stacked``: two-word headers on two lines, ``fold``: long class names may fold."""
    tab = Table(title="Per workload class", title_justify="left", pad_edge=False, box=None)
    for col in ("class", "done", "TTFT p50", "TPOT p50", "E2E p50", "E2E p99", "req/s", "out tok/s", "goodput"):
        header = col.replace(" ", "\n") if stacked else col
        if col == "class":
            tab.add_column(header, no_wrap=not fold, overflow="fold")
        else:
            tab.add_column(header, justify="right", no_wrap=True)
    for s in m.latency:
        good = "-" if s.goodput is None else f"{s.goodput:.2f}/s"
        tab.add_row(
            s.workload_class,
            str(s.completed),
            _ms(s.ttft.p50),
            _ms(s.tpot.p50),
            _ms(s.e2e.p50),
            _ms(s.e2e.p99),
            f"{s.request_throughput:.2f}",
            f"{s.output_token_throughput:,.0f}",
            good,
        )
    return tab


def _fitted_classes(m: BottleneckMap) -> Fit:
    return Fit([lambda st=st, f=f: _class_table(m, st, f) for st, f in ((False, False), (True, False), (True, True))])


def _others(m: BottleneckMap) -> Text:
    t = Text()
    others = [v for v in m.verdicts if v is not m.top and v.cls != "balanced" and v.confident]
    for v in others[:3]:
        # What the share is made of (the first evidence line), why it ranks here, and its fix.
        what = v.evidence[0].text if v.evidence else f"{_pct(v.share_of_latency)} of latency"
        note = f"; {v.rank_note}" if v.rank_note else ""
        t.append("Also: ", style="bold")
        t.append(f"{v.cls}, confidence {v.confidence:.2f}{note}. {what}. Fix: {v.recommendation.split(';')[0]}\n")
    if m.unreachable:
        t.append("Cannot judge: ", style="bold yellow")
        t.append("; ".join(f"{u.cls} ({u.reason})" for u in m.unreachable) + "\n")
    lat = m.latency_for("all")
    bits = []
    if lat is not None:
        if lat.preemptions:
            bits.append(f"{lat.preemptions} preemptions")
        if lat.prefix_cache_hit_rate is not None:
            bits.append(f"prefix-cache hit rate {_pct(lat.prefix_cache_hit_rate)}")
    if m.kv_usage:
        bits.append(f"KV usage mean {_pct(m.kv_usage.get('mean'))}, max {_pct(m.kv_usage.get('max'))}")
    if m.cost.cost_per_million_output_tokens is not None:
        bits.append(f"${m.cost.cost_per_million_output_tokens:,.2f} per M output tokens")
    if m.cost.energy_per_output_token_j is not None:
        bits.append(f"{m.cost.energy_per_output_token_j:.2f} J per output token")
    if m.windows:
        hot = [w for w in m.windows if w.cls not in ("balanced", "idle")]
        bits.append(f"{len(hot)}/{len(m.windows)} windows of {m.window_s:g} s with a confident verdict")
    if bits:
        t.append("Run: ", style="bold")
        t.append(", ".join(bits) + "\n")
    if m.worst_requests:
        w = m.worst_requests[0]
        t.append("Slowest request: ", style="bold")
        t.append(f"{w.request_id} {w.e2e_s:.3f} s, {w.why}\n")
    for warning in m.warnings:
        t.append(f"warning: {warning}\n", style="yellow")
    return t


def render(m: BottleneckMap) -> Group:
    """The summary as a rich renderable."""
    head = Text(
        f"{m.model or 'model ?'} on {m.device.name} ({m.device.kind}), {m.duration_s:.1f} s, bundle {m.bundle}"
        + (f", instance {m.instance}" if m.instance else "")
        + "\n",
        style="dim",
    )
    return Group(
        head,
        _headline(m),
        _evidence(m),
        _fitted_map(m),
        Text(""),
        _percentile_table(m),
        Text(""),
        _fitted_classes(m),
        Text(""),
        _others(m),
    )


def summary_text(m: BottleneckMap | str | os.PathLike[str], width: int = 120) -> str:
    """The summary as plain text, of a map or of a bundle path (analysed with defaults)."""
    if not isinstance(m, BottleneckMap):
        from bottleneck_map.analyzer.api import analyze

        m = analyze(m)
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False, highlight=False).print(render(m))
    return buf.getvalue()


def summarize_bundle(bundle: str | os.PathLike[str]):
    """Analyse a bundle with defaults and return the rich summary (``bottleneck-map run`` prints it)."""
    from bottleneck_map.analyzer.api import analyze

    return render(analyze(bundle))


__all__ = ["render", "summarize_bundle", "summary_text"]
