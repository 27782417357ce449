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
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FLEET = "fleet"
ENGINE_SOURCES = ("prometheus:vllm",)


def host_of(instance: str | None) -> str | None:
    if instance is None:
        return None
    host, sep, port = instance.rpartition(":")
    return host if sep and port.isdigit() else instance


def instances(requests: pa.Table) -> list[str]:
    """Serving instances named in the requests table (nulls left out)."""
    vals = pc.unique(requests.column("instance")).to_pylist()
    return sorted(v for v in vals if v is not None)


def _where(table: pa.Table, mask: Any) -> pa.Table:
    return table.filter(pa.array(np.asarray(mask, dtype=bool)))


def instance_tables(tables: Any, instance: str) -> Any:
    """The analyzer's ``Tables`` restricted to one instance (see the module doc)."""
    req_inst = tables.requests.column("instance").to_numpy(zero_copy_only=False)
    step_inst = tables.steps.column("instance").to_numpy(zero_copy_only=False)
    s_inst = tables.samples.column("instance").to_numpy(zero_copy_only=False)
    source = tables.samples.column("source").to_numpy(zero_copy_only=False)
    host = host_of(instance)
    s_host = np.array([host_of(i) for i in s_inst], dtype=object)
    host_level = ~np.isin(source, ENGINE_SOURCES)
    keep = (s_inst == instance) | (host_level & (s_host == host))
    meta = dict(tables.meta)
    meta["instance"] = instance
    return replace(
        tables,
        meta=meta,
        requests=_where(tables.requests, req_inst == instance),
        steps=_where(tables.steps, step_inst == instance),
        samples=_where(tables.samples, keep),
    )


def fleet_maps(bundle: str | os.PathLike[str], **analyze_kw: Any) -> dict[str, Any]:
    """``{"fleet": map of every request, instance: map of that instance, ...}``."""
    from bottleneck_map.analyzer.api import analyze
    from bottleneck_map.analyzer.data import load

    tables = load(bundle)
    maps = {FLEET: analyze(tables, **analyze_kw)}
    for inst in instances(tables.requests):
        maps[inst] = analyze(instance_tables(tables, inst), **analyze_kw)
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
