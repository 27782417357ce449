"""Time series read from the bundle for the timeline, aggregated on the server.

These are plain readings of the bundle's step and sample columns (no diagnosis):
what the engine and the hardware were doing over time. Dense series are bucketed
into at most a few thousand points before they reach the browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer.engine_samples import instance_series
from bottleneck_map.schema import CLOCK_EVENT_BITS, THROTTLE_FLAGS

MAX_POINTS = 1500

# Engine series: column -> how to aggregate a bucket.
ENGINE_AGG = {
    "batch_size": "mean",
    "num_running": "mean",
    "num_waiting": "max",
    "kv_usage": "max",
    "num_preempted": "sum",
    "prefill_tokens": "mean",
    "decode_tokens": "mean",
}

# Hardware series: (label, unit, preferred column, fallback column).
HARDWARE_SERIES: dict[str, list[tuple[str, str, str, str | None]]] = {
    "gpu_activity": [
        ("DRAM bandwidth", "ratio", "gpm_dram_bw_util_ratio", "mem_util_ratio"),
        ("SM occupancy", "ratio", "gpm_sm_occupancy_ratio", None),
        ("SM active", "ratio", "gpm_sm_util_ratio", "gpu_util_ratio"),
        ("tensor active", "ratio", "gpm_tensor_active_ratio", None),
    ],
    "pcie": [
        ("PCIe TX", "bytes/s", "gpm_pcie_tx_bytes_per_s", "pcie_tx_bytes_per_s"),
        ("PCIe RX", "bytes/s", "gpm_pcie_rx_bytes_per_s", "pcie_rx_bytes_per_s"),
    ],
    "power": [
        ("power", "W", "power_w", None),
        ("power limit", "W", "power_limit_w", None),
    ],
    "clock": [
        ("SM clock", "Hz", "sm_clock_hz", None),
        ("SM clock max", "Hz", "sm_clock_max_hz", None),
    ],
    "cpu": [
        ("host CPU (all cores)", "ratio", "cpu_util_ratio", None),
        ("busiest core", "ratio", "cpu_util_max_core_ratio", None),
        ("engine process CPU", "ratio", "proc_cpu_ratio", None),
    ],
}
HARDWARE_LABELS = {
    "gpu_activity": "GPU activity (DRAM bandwidth, SM occupancy, tensor)",
    "pcie": "PCIe TX/RX",
    "power": "power",
    "clock": "SM clock and throttling",
    "cpu": "host and engine CPU",
}
THROTTLE_MASK = int(sum(CLOCK_EVENT_BITS[f] for f in THROTTLE_FLAGS))


def _col(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if not len(col):
        return np.empty(0, np.float64)
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def engine_frame(steps: pa.Table, t0_ns: int) -> pd.DataFrame:
    """One row per engine step: time since run start and the engine's state in that step."""
    if steps.num_rows == 0:
        return pd.DataFrame(columns=["t_s", *ENGINE_AGG])
    used = _col(steps, "kv_blocks_used")
    free = _col(steps, "kv_blocks_free")
    with np.errstate(invalid="ignore", divide="ignore"):
        kv = used / (used + free)
    batch = pc.list_value_length(steps.column("request_ids")).to_numpy(zero_copy_only=False).astype(np.float64)
    prefill_seqs = _col(steps, "num_prefill_seqs")
    decode = _col(steps, "num_decode_seqs")
    batch = np.where(np.isnan(batch), prefill_seqs + decode, batch)
    return pd.DataFrame(
        {
            "t_s": (steps.column("start_ns").to_numpy().astype(np.int64) - t0_ns) / 1e9,
            "batch_size": batch,
            "num_running": _col(steps, "num_running"),
            "num_waiting": _col(steps, "num_waiting"),
            "kv_usage": kv,
            "num_preempted": _col(steps, "num_preempted"),
            "prefill_tokens": _col(steps, "num_prefill_tokens"),
            "decode_tokens": decode,
        }
    )


# Engine series from the samples (bundles without steps): key -> (column of the analyzer's
# ``instance_series``, how to aggregate a bucket).
SAMPLE_ENGINE_SERIES = {
    "num_running": ("num_requests_running", "mean"),
    "num_waiting": ("num_requests_waiting", "max"),
    "kv_usage": ("kv_cache_usage_ratio", "max"),
    "num_preempted": ("num_preemptions_total_increase", "sum"),
    "prompt_tokens_per_s": ("prompt_tokens_total_per_s", "mean"),
    "generation_tokens_per_s": ("generation_tokens_total_per_s", "mean"),
}


@dataclass
class SampleEngineFrame:
    """The serving engine's own series (Prometheus samples), one column per series and instance."""

    frame: pd.DataFrame  # t_s plus one column per (series key, instance), named by ``column``
    instances: list[str]  # instances with any engine series, in name order
    series: list[str]  # keys of SAMPLE_ENGINE_SERIES with data for some instance

    @staticmethod
    def column(key: str, instance: str) -> str:
        return f"{key}@{instance}"

    def agg(self) -> dict[str, str]:
        return {c: SAMPLE_ENGINE_SERIES[c.split("@", 1)[0]][1] for c in self.frame.columns if c != "t_s"}

    def __len__(self) -> int:
        return len(self.frame) if self.series else 0


def sample_engine_frame(samples: pa.Table, t0_ns: int) -> SampleEngineFrame:
    """Engine series per instance from the samples' engine columns, read by the analyzer's
    :func:`~bottleneck_map.analyzer.engine_samples.instance_series` (levels as sampled, counters
    as their increase or per-second rate since the instance's previous sample)."""
    df = instance_series(samples)
    if df.empty:
        return SampleEngineFrame(pd.DataFrame({"t_s": []}), [], [])
    t_s = (df["ts_ns"].to_numpy().astype(np.int64) - t0_ns) / 1e9
    inst = df["instance"].to_numpy()
    columns: dict[str, np.ndarray] = {"t_s": t_s}
    instances: set[str] = set()
    keys: list[str] = []
    for key, (src, _agg) in SAMPLE_ENGINE_SERIES.items():
        values = df[src].to_numpy(dtype=np.float64)
        for name in sorted(set(inst)):
            v = np.where(inst == name, values, np.nan)
            if np.all(np.isnan(v)):
                continue
            columns[SampleEngineFrame.column(key, name)] = v
            instances.add(name)
            if key not in keys:
                keys.append(key)
    frame = pd.DataFrame(columns).sort_values("t_s", kind="stable").reset_index(drop=True)
    return SampleEngineFrame(frame, sorted(instances), keys)


@dataclass
class HardwareFrame:
    """Samples as a frame with one column per series label (per device when several)."""

    frame: pd.DataFrame  # t_s plus one column per series
    groups: dict[str, list[tuple[str, str]]]  # panel -> [(column label, unit)]
    missing: list[str]  # panel labels the bundle has no data for
    throttle: list[tuple[float, float]]  # spans (start_s, end_s) with a throttling clock-event reason


def hardware_frame(samples: pa.Table, t0_ns: int) -> HardwareFrame:
    """Hardware series present in the samples; panels without any data are listed as missing."""
    if samples.num_rows == 0:
        return HardwareFrame(pd.DataFrame({"t_s": []}), {}, list(HARDWARE_LABELS.values()), [])
    t_s = (samples.column("ts_ns").to_numpy().astype(np.int64) - t0_ns) / 1e9
    devices = np.asarray(samples.column("device").to_pylist(), dtype=object)
    names = sorted({d for d in devices if d is not None})
    columns: dict[str, np.ndarray] = {"t_s": t_s}
    groups: dict[str, list[tuple[str, str]]] = {}
    missing: list[str] = []
    for panel, series in HARDWARE_SERIES.items():
        found: list[tuple[str, str]] = []
        for label, unit, preferred, fallback in series:
            values = _col(samples, preferred)
            if np.all(np.isnan(values)) and fallback is not None:
                values = _col(samples, fallback)
                if not np.all(np.isnan(values)):
                    label = f"{label} (NVML {fallback.removesuffix('_ratio').replace('_', ' ')})"
            if np.all(np.isnan(values)):
                continue
            if panel != "cpu" and len(names) > 1:
                for dev in names:
                    columns[f"{label} gpu{dev}"] = np.where(devices == dev, values, np.nan)
                    found.append((f"{label} gpu{dev}", unit))
            else:
                columns[label] = values
                found.append((label, unit))
        if found:
            groups[panel] = found
        else:
            missing.append(HARDWARE_LABELS[panel])
    frame = pd.DataFrame(columns).sort_values("t_s", kind="stable").reset_index(drop=True)
    return HardwareFrame(frame, groups, missing, throttle_spans(samples, t0_ns))


def throttle_spans(samples: pa.Table, t0_ns: int) -> list[tuple[float, float]]:
    """Time spans in which any device reported a power or thermal clock-event reason."""
    reasons = samples.column("clock_event_reasons")
    if reasons.null_count == len(reasons):
        return []
    ts = samples.column("ts_ns").to_numpy().astype(np.int64)
    bits = pc.fill_null(reasons, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    has = reasons.is_valid().to_numpy(zero_copy_only=False)
    order = np.argsort(ts[has], kind="stable")
    ts, hot = ts[has][order], (bits[has][order] & THROTTLE_MASK) != 0
    spans: list[tuple[float, float]] = []
    start = None
    for i in range(len(ts)):
        if hot[i] and start is None:
            start = ts[i - 1] if i else ts[i]
        elif not hot[i] and start is not None:
            spans.append(((start - t0_ns) / 1e9, (ts[i - 1] - t0_ns) / 1e9))
            start = None
    if start is not None:
        spans.append(((start - t0_ns) / 1e9, (ts[-1] - t0_ns) / 1e9))
    return spans


def bucket(
    frame: pd.DataFrame,
    agg: dict[str, str],
    *,
    max_points: int = MAX_POINTS,
    x_range: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """At most ``max_points`` rows: equal-width time buckets over ``t_s`` with one aggregate per column.

    Rows outside ``x_range`` are dropped first; a frame already small enough is returned as is.
    """
    if x_range is not None and len(frame):
        lo, hi = x_range
        frame = frame[(frame["t_s"] >= lo) & (frame["t_s"] <= hi)]
    if len(frame) <= max_points:
        return _compact(frame.reset_index(drop=True))
    t = frame["t_s"].to_numpy()
    lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
    width = (hi - lo) / max_points or 1.0
    idx = np.minimum(((t - lo) / width).astype(np.int64), max_points - 1)
    out = frame.drop(columns="t_s").groupby(idx, sort=True).agg(agg)
    out.insert(0, "t_s", lo + (out.index.to_numpy() + 0.5) * width)
    return _compact(out.reset_index(drop=True))


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """float32 halves what reaches the browser; plotted values need no more precision."""
    return frame.astype({c: np.float32 for c in frame.columns if frame[c].dtype.kind == "f"})
