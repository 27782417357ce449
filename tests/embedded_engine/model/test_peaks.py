from __future__ import annotations

import torch

from bottleneck_map.embedded_engine.model.peaks import measure_peaks


def test_measures_plausible_cpu_peaks():
    peaks = measure_peaks("cpu", torch.float32, seconds=0.1)
    assert set(peaks) == {"copy_bandwidth_bytes_per_s", "matmul_flops", "matmul_dtype"}
    assert peaks["matmul_dtype"] == "float32"
    # Any machine that runs the test suite copies faster than 100 MB/s and multiplies faster than 100 MFLOP/s;
    # nothing reaches 10 TB/s or 1 PFLOP/s on a CPU.
    assert 1e8 < peaks["copy_bandwidth_bytes_per_s"] < 1e13
    assert 1e8 < peaks["matmul_flops"] < 1e15
