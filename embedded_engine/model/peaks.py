"""Measured device peaks for the roofline: large-tensor copy bandwidth and matmul FLOP/s.

Both are best-of-N over a short time budget, so they estimate what this device reaches right now,
which on a shared CPU is more honest than a datasheet number.
"""

from __future__ import annotations

import time

import torch

from bottleneck_map.embedded_engine.model.model_config import dtype_name

# Copy working set (source + destination) well beyond any CPU's last-level cache.
_COPY_BYTES = {"cpu": 1 << 30, "cuda": 2 << 30}
_MATMUL_N = {"cpu": 1024, "cuda": 8192}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn, work: float, device: torch.device, seconds: float, min_runs: int = 3) -> float:
    """Highest ``work / duration`` over repeated calls of ``fn`` within ``seconds`` (after one warm-up)."""
    fn()
    _sync(device)
    best, deadline, runs = 0.0, time.perf_counter() + seconds, 0
    while runs < min_runs or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = max(best, work / (time.perf_counter() - t0))
        runs += 1
    return best


def copy_bandwidth(device: torch.device, seconds: float) -> float:
    """Bytes per second of a large ``copy_``, counting the bytes read and the bytes written."""
    n = _COPY_BYTES.get(device.type, 1 << 30) // 2 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return _best_rate(lambda: dst.copy_(src), 2.0 * n * 4, device, seconds)


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """FLOP/s of a square matmul in ``dtype`` (2 n^3 per product)."""
    n = _MATMUL_N.get(device.type, 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, device, seconds)


def measure_peaks(device: torch.device | str, dtype: torch.dtype, seconds: float = 0.5) -> dict:
    """``{"copy_bandwidth_bytes_per_s", "matmul_flops", "matmul_dtype"}`` measured on ``device``."""
    device = torch.device(device)
    with torch.inference_mode():
        bw = copy_bandwidth(device, seconds / 2)
        flops = matmul_flops(device, dtype, seconds / 2)
    return {"copy_bandwidth_bytes_per_s": bw, "matmul_flops": flops, "matmul_dtype": dtype_name(dtype)}
