"""Prometheus ingest: range queries over a run's interval -> bundle sample rows.

Each :class:`SeriesSpec` is one PromQL expression aggregated to one series per
``instance`` (and per device for GPU metrics) whose values, times ``scale``,
fill one column of the samples table. Series come from the engines (vLLM's
``vllm:*`` names, which ``bottleneck-map serve`` also exposes), from
bottleneck-map agents, from dcgm-exporter and from node-exporter; whichever a
Prometheus server has are used, the rest are simply absent. Rows from the same
instance, device, source and timestamp are merged, so one row carries every
column measured at that moment. Times are Unix nanoseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bottleneck_map.ingest.vllm_series import ENGINE_SERIES, promql


class PrometheusError(RuntimeError):
    """The Prometheus server could not be queried; the message says why."""


@dataclass(frozen=True)
class SeriesSpec:
    column: str
    query: str
    source: str
    scale: float = 1.0
    device_label: str | None = None


def _by(expr: str, agg: str = "sum", device_label: str | None = None) -> str:
    labels = "instance" + (f", {device_label}" if device_label else "")
    return f"{agg} by ({labels}) ({expr})"


# vLLM engine series (also what `bottleneck-map serve` exposes), from the table that a scrape
# of /metrics uses too; `or` keeps older vLLM names working.
VLLM_SERIES: tuple[SeriesSpec, ...] = tuple(SeriesSpec(e.column, promql(e), "vllm") for e in ENGINE_SERIES)

# dcgm-exporter (NVIDIA DCGM field names; percentages and MiB/MHz converted to base units).
DCGM_SERIES: tuple[SeriesSpec, ...] = tuple(
    SeriesSpec(col, _by(name, "avg", "gpu"), "dcgm", scale, "gpu")
    for col, name, scale in (
        ("gpu_util_ratio", "DCGM_FI_DEV_GPU_UTIL", 0.01),
        ("mem_util_ratio", "DCGM_FI_DEV_MEM_COPY_UTIL", 0.01),
        ("gpu_mem_used_bytes", "DCGM_FI_DEV_FB_USED", 1024.0 * 1024.0),
        ("power_w", "DCGM_FI_DEV_POWER_USAGE", 1.0),
        ("temperature_c", "DCGM_FI_DEV_GPU_TEMP", 1.0),
        ("sm_clock_hz", "DCGM_FI_DEV_SM_CLOCK", 1e6),
        ("mem_clock_hz", "DCGM_FI_DEV_MEM_CLOCK", 1e6),
        ("clock_event_reasons", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 1.0),
        ("gpm_sm_util_ratio", "DCGM_FI_PROF_SM_ACTIVE", 1.0),
        ("gpm_sm_occupancy_ratio", "DCGM_FI_PROF_SM_OCCUPANCY", 1.0),
        ("gpm_dram_bw_util_ratio", "DCGM_FI_PROF_DRAM_ACTIVE", 1.0),
        ("gpm_tensor_active_ratio", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 1.0),
        ("gpm_pcie_tx_bytes_per_s", "DCGM_FI_PROF_PCIE_TX_BYTES", 1.0),
        ("gpm_pcie_rx_bytes_per_s", "DCGM_FI_PROF_PCIE_RX_BYTES", 1.0),
    )
)


def agent_series(rate_window: str) -> tuple[SeriesSpec, ...]:
    """bottleneck-map agents (their Prometheus naming scheme, base units already)."""
    from bottleneck_map.agent.names import GPU_METRICS
    from bottleneck_map.schema import SAMPLES

    columns = set(SAMPLES.names)
    gpu = tuple(
        SeriesSpec(m.field, _by(m.prom, "avg", "gpu"), "agent", 1.0, "gpu")
        for m in GPU_METRICS
        if m.field in columns and m.kind == "gauge" and not m.field.startswith("proc_")
    )
    cpu = "bmap_host_cpu_core_utilization_ratio"
    host = (
        SeriesSpec("cpu_util_ratio", _by("bmap_host_cpu_utilization_ratio", "max"), "agent"),
        SeriesSpec("cpu_util_max_core_ratio", _by(cpu, "max"), "agent"),
        SeriesSpec("load1", _by("bmap_host_load1", "max"), "agent"),
        SeriesSpec("host_mem_used_bytes", _by("bmap_host_memory_used_bytes", "max"), "agent"),
        SeriesSpec("host_mem_total_bytes", _by("bmap_host_memory_total_bytes", "max"), "agent"),
        SeriesSpec("host_swap_used_bytes", _by("bmap_host_swap_used_bytes", "max"), "agent"),
        SeriesSpec("net_rx_bytes_total", _by("bmap_host_network_receive_bytes_total"), "agent"),
        SeriesSpec("net_tx_bytes_total", _by("bmap_host_network_transmit_bytes_total"), "agent"),
        SeriesSpec("proc_cpu_ratio", _by("bmap_process_cpu_ratio"), "agent"),
        SeriesSpec("proc_num_threads", _by("bmap_process_threads"), "agent"),
        SeriesSpec("proc_rss_bytes", _by("bmap_process_resident_memory_bytes"), "agent"),
    )
    del rate_window  # agent series are gauges and raw counters; nothing to rate
    return (*gpu, *host)


def node_series(rate_window: str) -> tuple[SeriesSpec, ...]:
    """node-exporter host series; rates over ``rate_window`` (a PromQL duration)."""
    idle = f'rate(node_cpu_seconds_total{{mode="idle"}}[{rate_window}])'
    return (
        SeriesSpec("cpu_util_ratio", f"1 - avg by (instance) ({idle})", "node"),
        SeriesSpec("cpu_util_max_core_ratio", f"1 - min by (instance) ({idle})", "node"),
        SeriesSpec("load1", _by("node_load1", "max"), "node"),
        SeriesSpec(
            "host_mem_used_bytes", _by("node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes", "max"), "node"
        ),
        SeriesSpec("host_mem_total_bytes", _by("node_memory_MemTotal_bytes", "max"), "node"),
        SeriesSpec("net_rx_bytes_total", _by("node_network_receive_bytes_total"), "node"),
        SeriesSpec("net_tx_bytes_total", _by("node_network_transmit_bytes_total"), "node"),
    )


def default_series(rate_window: str = "1m", extra: Iterable[SeriesSpec] = ()) -> tuple[SeriesSpec, ...]:
    return (*VLLM_SERIES, *agent_series(rate_window), *DCGM_SERIES, *node_series(rate_window), *extra)


def query_range(
    client: httpx.Client, base_url: str, query: str, start_s: float, end_s: float, step_s: float
) -> list[dict[str, Any]]:
    """The ``matrix`` result of ``/api/v1/query_range``: ``[{"metric": {...}, "values": [[t, "v"], ...]}]``."""
    url = base_url.rstrip("/") + "/api/v1/query_range"
    params = {"query": query, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
    try:
        resp = client.get(url, params=params)
    except httpx.HTTPError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {base_url}: {exc}") from exc
    try:
        doc = resp.json()
    except ValueError:
        raise PrometheusError(f"{url} answered HTTP {resp.status_code} with a non-JSON body") from None
    if resp.status_code != 200 or doc.get("status") != "success":
        raise PrometheusError(f"{url} query {query!r} failed: HTTP {resp.status_code}: {doc.get('error', doc)}")
    data = doc.get("data") or {}
    if data.get("resultType") != "matrix":
        raise PrometheusError(f"{url} query {query!r}: expected a matrix, got {data.get('resultType')!r}")
    return list(data.get("result") or [])


def step_for(start_s: float, end_s: float, max_points: int = 10_000, min_step_s: float = 1.0) -> float:
    """A query step that keeps each series under Prometheus' 11,000-point limit."""
    return max(min_step_s, math.ceil((end_s - start_s) / max_points))


def collect_samples(
    base_url: str,
    start_ns: int,
    end_ns: int,
    *,
    step_s: float | None = None,
    series: Sequence[SeriesSpec] | None = None,
    instances: Sequence[str] | None = None,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Query every series over ``[start_ns, end_ns]`` (Unix ns); returns sample rows
    and the number of points found per column. ``instances`` keeps only those
    ``instance`` label values."""
    if end_ns < start_ns:
        raise ValueError(f"end ({end_ns}) is before start ({start_ns})")
    start_s, end_s = start_ns / 1e9, end_ns / 1e9
    step = step_s if step_s is not None else step_for(start_s, end_s)
    specs = tuple(series) if series is not None else default_series(f"{max(4 * step, 15):g}s")
    keep = set(instances) if instances else None
    rows: dict[tuple, dict[str, Any]] = {}
    points: dict[str, int] = {}
    own = client is None
    http = client or httpx.Client(timeout=timeout_s)
    try:
        for spec in specs:
            for res in query_range(http, base_url, spec.query, start_s, end_s, step):
                labels = res.get("metric") or {}
                inst = labels.get("instance")
                if keep is not None and inst not in keep:
                    continue
                device = labels.get(spec.device_label) if spec.device_label else None
                for t, v in res.get("values") or []:
                    value = float(v)
                    if not math.isfinite(value):
                        continue
                    ts = round(float(t) * 1e9)
                    key = (inst, device, spec.source, ts)
                    row = rows.setdefault(
                        key, {"ts_ns": ts, "source": f"prometheus:{spec.source}", "device": device, "instance": inst}
                    )
                    value *= spec.scale
                    row[spec.column] = int(value) if spec.column == "clock_event_reasons" else value
                    points[spec.column] = points.get(spec.column, 0) + 1
    finally:
        if own:
            http.close()
    return [rows[k] for k in sorted(rows, key=lambda k: (k[3], str(k[0]), str(k[1]), k[2]))], points
