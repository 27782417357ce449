"""Hardware evidence: agent samples joined to steps and time windows by timestamp.

GPU samples (NVML/GPM) and host samples (psutil) arrive as rows with different
columns filled in; every metric here is averaged over the rows that carry it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bottleneck_map.analyzer.data import f64, ns
from bottleneck_map.schema import CLOCK_EVENT_BITS, THROTTLE_FLAGS

# A GPU sample counts as busy above this utilisation (NVML "time a kernel was running").
BUSY_UTIL = 0.5
THROTTLE_MASK = int(np.bitwise_or.reduce([CLOCK_EVENT_BITS[f] for f in THROTTLE_FLAGS]))

METRICS = (
    "gpu_util_ratio",
    "mem_util_ratio",
    "gpm_dram_bw_util_ratio",
    "gpm_sm_occupancy_ratio",
    "gpm_sm_util_ratio",
    "gpm_tensor_active_ratio",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "gpm_pcie_tx_bytes_per_s",
    "gpm_pcie_rx_bytes_per_s",
    "power_w",
    "power_limit_w",
    "temperature_c",
    "sm_clock_hz",
    "sm_clock_max_hz",
    "cpu_util_ratio",
    "cpu_util_max_core_ratio",
    "proc_cpu_ratio",
)


def sample_frame(samples: pa.Table) -> pd.DataFrame:
    """Samples as a frame with ``ts_ns``, the metric columns, ``throttled`` and ``sm_clock_ratio``."""
    df = pd.DataFrame({"ts_ns": ns(samples, "ts_ns")})
    for m in METRICS:
        df[m] = f64(samples, m)
    col = samples.column("clock_event_reasons")
    has = col.is_valid().to_numpy(zero_copy_only=False).astype(bool) if samples.num_rows else np.empty(0, bool)
    reasons = pc.fill_null(col, 0).to_numpy().astype(np.int64) if samples.num_rows else np.empty(0, np.int64)
    df["clock_event_reasons"] = np.where(has, reasons, 0)
    df["throttled"] = (reasons & THROTTLE_MASK) != 0
    df["has_reasons"] = has
    with np.errstate(divide="ignore", invalid="ignore"):
        df["sm_clock_ratio"] = df["sm_clock_hz"] / df["sm_clock_max_hz"]
    df["energy_j"] = f64(samples, "energy_j")
    df["device"] = samples.column("device").to_numpy(zero_copy_only=False) if samples.num_rows else np.empty(0, object)
    return df.sort_values("ts_ns", kind="stable").reset_index(drop=True)


def throttle_reasons(frame: pd.DataFrame) -> dict[str, int]:
    """How many samples carried each throttle reason bit."""
    r = frame["clock_event_reasons"].to_numpy().astype(np.int64)
    return {
        f: int(((r & CLOCK_EVENT_BITS[f]) != 0).sum()) for f in THROTTLE_FLAGS if ((r & CLOCK_EVENT_BITS[f]) != 0).any()
    }


def busy_mask(frame: pd.DataFrame, step_start: np.ndarray, step_end: np.ndarray) -> np.ndarray:
    """Samples taken while the accelerator was busy: utilisation above BUSY_UTIL, or inside a step."""
    util = frame["gpu_util_ratio"].to_numpy()
    busy = util >= BUSY_UTIL
    if len(step_start):
        order = np.argsort(step_start, kind="stable")
        s, e = step_start[order], np.maximum.accumulate(step_end[order])
        ts = frame["ts_ns"].to_numpy()
        i = np.searchsorted(s, ts, side="right") - 1
        inside = (i >= 0) & (ts <= e[np.clip(i, 0, None)])
        busy = busy | (inside & np.isnan(util))
    return busy


def per_window(frame: pd.DataFrame, t0: int, window_ns: int, n_windows: int) -> pd.DataFrame:
    """Mean of each metric per window (index 0..n_windows-1)."""
    if frame.empty:
        return pd.DataFrame(index=pd.RangeIndex(n_windows))
    w = ((frame["ts_ns"].to_numpy() - t0) // window_ns).clip(0, max(n_windows - 1, 0))
    cols = [*METRICS, "sm_clock_ratio"]
    g = frame[cols].assign(window=w, throttled=frame["throttled"].astype(float)).groupby("window").mean()
    return g.reindex(pd.RangeIndex(n_windows))


def step_samples(frame: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """The sample nearest each step's midpoint (``merge_asof``), for per-step hardware evidence."""
    if frame.empty or steps.empty:
        return pd.DataFrame(index=steps.index)
    mid = pd.DataFrame(
        {"mid": (steps["start_ns"].to_numpy() + steps["end_ns"].to_numpy()) // 2, "pos": np.arange(len(steps))}
    )
    mid = mid.sort_values("mid")
    cols = ["ts_ns", "sm_clock_ratio", "throttled", "gpu_util_ratio", "pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"]
    have = frame[cols].dropna(subset=["ts_ns"])
    joined = pd.merge_asof(mid, have, left_on="mid", right_on="ts_ns", direction="nearest")
    return joined.sort_values("pos").set_index(steps.index)


def summary(frame: pd.DataFrame, busy: np.ndarray) -> dict[str, float | None]:
    """Run-wide means of the hardware metrics (busy samples for clocks and bandwidth)."""
    out: dict[str, float | None] = {}
    if frame.empty:
        return out
    for m in METRICS:
        v = frame[m].to_numpy()
        v = v[np.isfinite(v)]
        if len(v):
            out[m] = float(v.mean())
    b = frame[busy]
    r = b["sm_clock_ratio"].to_numpy()
    r = r[np.isfinite(r)]
    out["busy_samples"] = float(len(b))
    if len(r):
        out["busy_sm_clock_ratio"] = float(r.mean())
    if b["has_reasons"].any():
        out["busy_throttled_fraction"] = float(b.loc[b["has_reasons"], "throttled"].mean())
    e = frame.dropna(subset=["energy_j"])
    if len(e) >= 2:
        total = 0.0
        for _, g in e.groupby(e["device"].fillna("")):
            vals = g["energy_j"].to_numpy()
            total += float(vals.max() - vals.min())
        out["energy_j"] = total
    return out
