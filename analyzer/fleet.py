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
                "unreachable": sorted(u.cls for u in m.unreachable),
            }
        )
    return rows
