"""Engine and hardware series read from the bundle, and server-side bucketing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from bottleneck_map.bundle import read_bundle
from bottleneck_map.dashboard import series
from bottleneck_map.schema import CLOCK_EVENT_BITS, SAMPLES


def test_bucket_keeps_small_frames_and_aggregates_large_ones() -> None:
    small = pd.DataFrame({"t_s": [0.0, 1.0], "v": [1.0, 2.0]})
    assert series.bucket(small, {"v": "mean"}, max_points=10)["v"].tolist() == [1.0, 2.0]
    t = np.linspace(0, 100, 100_001)
    big = pd.DataFrame({"t_s": t, "mean": np.ones_like(t), "peak": (t == 50.0).astype(float), "n": np.ones_like(t)})
    out = series.bucket(big, {"mean": "mean", "peak": "max", "n": "sum"}, max_points=500)
    assert len(out) == 500
    assert out["mean"].eq(1).all()
    assert out["peak"].sum() == 1, "a one-step spike survives bucketing"
    assert out["n"].sum() == len(t), "sums keep every step"
    assert out["t_s"].is_monotonic_increasing
    zoomed = series.bucket(big, {"mean": "mean", "peak": "max", "n": "sum"}, max_points=500, x_range=(9.9995, 10.2005))
    assert len(zoomed) == 201 and zoomed["t_s"].between(9.999, 10.201).all(), "zoomed in: full resolution"
    assert out["mean"].dtype == np.float32


def test_engine_frame_reads_the_steps(bundles: dict[str, Path]) -> None:
    b = read_bundle(bundles["busy"])
    steps = b.table("steps")
    t0 = int(steps.column("start_ns")[0].as_py())
    f = series.engine_frame(steps, t0)
    assert len(f) == steps.num_rows and f["t_s"].iloc[0] == 0
    assert f["kv_usage"].between(0, 1).all()
    assert (f["batch_size"] == [len(x) for x in steps.column("request_ids").to_pylist()]).all()
    assert f["num_preempted"].sum() > 0, "the busy run preempts"


def test_hardware_frame_groups_and_missing_panels(bundles: dict[str, Path]) -> None:
    b = read_bundle(bundles["busy"])
    hw = series.hardware_frame(b.table("samples"), 0)
    assert set(hw.groups) == {"gpu_activity", "pcie", "power", "clock", "cpu"}
    assert hw.missing == []
    assert hw.throttle, "the synthetic run has a power-capped stretch"
    empty = series.hardware_frame(SAMPLES.empty_table(), 0)
    assert empty.groups == {} and len(empty.missing) == 5


def test_hardware_frame_falls_back_to_nvml_columns_and_says_so() -> None:
    table = pa.Table.from_pylist(
        [{"ts_ns": i, "source": "nvml", "device": "0", "mem_util_ratio": 0.5, "gpu_util_ratio": 0.9} for i in range(3)],
        schema=SAMPLES,
    )
    hw = series.hardware_frame(table, 0)
    labels = [label for label, _ in hw.groups["gpu_activity"]]
    assert labels == ["DRAM bandwidth (NVML mem util)", "SM active (NVML gpu util)"]
    assert "PCIe TX/RX" in hw.missing


def test_throttle_spans_cover_the_flagged_samples() -> None:
    cap = CLOCK_EVENT_BITS["sw_power_cap"]
    idle = CLOCK_EVENT_BITS["gpu_idle"]
    reasons = [0, 0, cap, cap, idle, 0, CLOCK_EVENT_BITS["hw_thermal"]]
    table = pa.Table.from_pylist(
        [{"ts_ns": i * 1_000_000_000, "source": "nvml", "clock_event_reasons": r} for i, r in enumerate(reasons)],
        schema=SAMPLES,
    )
    assert series.throttle_spans(table, 0) == [(1.0, 3.0), (5.0, 6.0)], "idle is not throttling"
