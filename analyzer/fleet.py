"""Fleets: the bottleneck map per serving instance and fleet-wide, from one bundle.

A fleet bundle (``collect`` with several engines behind one Prometheus, or several
``serve`` instances writing one bundle) carries ``instance`` on every row. The map of
one instance is the analyzer's map of that instance's requests and steps, joined
with the samples of that instance (its engine series) and the host-level samples
(agent, dcgm-exporter, node-exporter) taken on the same host. Host is the part of
``instance`` before the last ``:`` (Prometheus' ``host:port``).
"""

from __future__ import annotations

import os
from typing import Any

FLEET = "fleet"


def fleet_maps(bundle: str | os.PathLike[str], **analyze_kw: Any) -> dict[str, Any]:
    """``{"fleet": map of every request, instance: map of that instance, ...}``.

    Each instance's map is ``analyze(tables, instance=...)`` (see
    :func:`bottleneck_map.analyzer.data.for_instance` for what it takes from the samples).
    """
    from bottleneck_map.analyzer.api import analyze
    from bottleneck_map.analyzer.data import instances, load

    tables = load(bundle)
    maps = {FLEET: analyze(tables, **analyze_kw)}
    for inst in instances(tables):
        maps[inst] = analyze(tables, instance=inst, **analyze_kw)
    return maps


def summary_rows(maps: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per map: requests, TTFT/TPOT/E2E p50 and p99, the top verdict and its share."""
    rows = []
    for name, m in maps.items():
        lat = m.latency_for("all")
        top = m.top
        rows.append(
            {
                "instance": name,
                "requests": lat.completed if lat else 0,
                "ttft_p50_s": lat.ttft.p50 if lat else None,
                "ttft_p99_s": lat.ttft.p99 if lat else None,
                "tpot_p50_s": lat.tpot.p50 if lat else None,
                "e2e_p99_s": lat.e2e.p99 if lat else None,
                "top": top.cls if top else None,
                "top_share": top.share_of_latency if top else None,
                "top_confidence": top.confidence if top else None,
                "unreachable": sorted(u.cls for u in m.unreachable),
            }
        )
    return rows


def top_label(row: dict[str, Any], spaced: bool = False) -> str:
    """The top verdict of a summary row as the text report words it ("no confident verdict" for
    a balanced map under 0.5 confidence); ``spaced``: words instead of the id, so it wraps."""
    cls, share, conf = row["top"], row["top_share"], row["top_confidence"]
    if cls is None:
        return "-"
    if cls == "balanced" and (conf or 0.0) < 0.5:
        return "no confident verdict"
    name = cls.replace("_", " ") if spaced else cls
    return name if share is None else f"{name} ({share:.0%})"


def fleet_table(rows: list[dict[str, Any]]) -> Any:
    """The summary rows as a table that fits the console: two-line headers, then wrapped names."""
    from rich.table import Table

    from bottleneck_map.terminal import Fit

    headers = ("instance", "done", "TTFT p50", "TTFT p99", "TPOT p50", "E2E p99", "top verdict (share)")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:,.1f}"

    def layout(stacked: bool, spaced: bool) -> Table:
        table = Table(title="Per instance, latency in ms", title_justify="left", pad_edge=False, box=None)
        for i, h in enumerate(headers):
            header = h.replace(" ", "\n", 1) if stacked and 1 < i < 6 else h
            if i in (0, 6):
                table.add_column(header, no_wrap=not spaced, overflow="fold")
            else:
                table.add_column(header, justify="right", no_wrap=True)
        for r in rows:
            table.add_row(
                r["instance"], str(r["requests"]), ms(r["ttft_p50_s"]), ms(r["ttft_p99_s"]), ms(r["tpot_p50_s"]),
                ms(r["e2e_p99_s"]), top_label(r, spaced),
            )  # fmt: skip
        return table

    return Fit([lambda: layout(False, False), lambda: layout(True, False), lambda: layout(True, True)])
