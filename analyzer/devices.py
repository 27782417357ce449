"""Device peaks for the roofline: a table of common GPUs and the peaks a run measured itself.

Table figures are dense (no sparsity) FP16/BF16 tensor-core FLOP/s and HBM/GDDR
bandwidth from NVIDIA's datasheets; ``docs/bottleneck-map.md`` lists the source of
each row. On a CPU only the run's own measurements (``meta["device"]["measured"]``)
are honest, so they take precedence there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bottleneck_map.analyzer.result import DevicePeaks

T = 1e12
GB = 1e9


@dataclass(frozen=True)
class GpuSpec:
    name: str
    match: tuple[str, ...]  # lower-case substrings that all appear in the NVML device name
    exclude: tuple[str, ...]
    fp16_flops: float
    bandwidth: float
    source: str


# Ordered: the first spec whose ``match`` all appear (and no ``exclude``) wins.
GPU_TABLE: tuple[GpuSpec, ...] = (
    GpuSpec(
        "H200", ("h200",), (), 989.4 * T, 4800 * GB, "NVIDIA H200 datasheet (SXM: 989 TFLOPS BF16 dense, 4.8 TB/s)"
    ),
    GpuSpec(
        "H100 NVL", ("h100", "nvl"), (), 835 * T, 3900 * GB, "NVIDIA H100 datasheet (NVL: 835 TFLOPS dense, 3.9 TB/s)"
    ),
    GpuSpec(
        "H100 PCIe",
        ("h100", "pcie"),
        (),
        756 * T,
        2000 * GB,
        "NVIDIA H100 datasheet (PCIe: 756 TFLOPS dense, 2.0 TB/s)",
    ),
    GpuSpec(
        "H100 SXM", ("h100",), (), 989.4 * T, 3350 * GB, "NVIDIA H100 datasheet (SXM: 989 TFLOPS dense, 3.35 TB/s)"
    ),
    GpuSpec(
        "A100 80GB PCIe",
        ("a100", "80", "pcie"),
        (),
        312 * T,
        1935 * GB,
        "NVIDIA A100 datasheet (80GB PCIe: 312 TFLOPS, 1,935 GB/s)",
    ),
    GpuSpec(
        "A100 80GB SXM",
        ("a100", "80"),
        (),
        312 * T,
        2039 * GB,
        "NVIDIA A100 datasheet (80GB SXM: 312 TFLOPS, 2,039 GB/s)",
    ),
    GpuSpec(
        "A100 40GB PCIe",
        ("a100", "pcie"),
        (),
        312 * T,
        1555 * GB,
        "NVIDIA A100 datasheet (40GB PCIe: 312 TFLOPS, 1,555 GB/s)",
    ),
    GpuSpec(
        "A100 40GB SXM", ("a100",), (), 312 * T, 1555 * GB, "NVIDIA A100 datasheet (40GB SXM: 312 TFLOPS, 1,555 GB/s)"
    ),
    GpuSpec("L40S", ("l40s",), (), 362.05 * T, 864 * GB, "NVIDIA L40S datasheet (362 TFLOPS FP16 dense, 864 GB/s)"),
    GpuSpec("L40", ("l40",), ("l40s",), 181.05 * T, 864 * GB, "NVIDIA L40 datasheet (181 TFLOPS FP16 dense, 864 GB/s)"),
    GpuSpec("L4", ("l4",), ("l40",), 121 * T, 300 * GB, "NVIDIA L4 datasheet (121 TFLOPS FP16 dense, 300 GB/s)"),
    GpuSpec(
        "A10G", ("a10g",), (), 70 * T, 600 * GB, "AWS G5 / NVIDIA A10G (70 TFLOPS FP16 dense, 600 GB/s; approximate)"
    ),
    GpuSpec(
        "A10", ("a10",), ("a100", "a10g"), 125 * T, 600 * GB, "NVIDIA A10 datasheet (125 TFLOPS FP16 dense, 600 GB/s)"
    ),
    GpuSpec(
        "RTX A6000",
        ("a6000",),
        (),
        154.8 * T,
        768 * GB,
        "NVIDIA RTX A6000 datasheet (154.8 TFLOPS FP16 tensor, 768 GB/s)",
    ),
    GpuSpec("T4", ("t4",), (), 65 * T, 320 * GB, "NVIDIA T4 datasheet (65 TFLOPS FP16, 320 GB/s)"),
    GpuSpec("V100 SXM2", ("v100",), (), 125 * T, 900 * GB, "NVIDIA V100 datasheet (SXM2: 125 TFLOPS, 900 GB/s)"),
)


def lookup_gpu(name: str | None) -> GpuSpec | None:
    """The table row for an NVML device name such as ``NVIDIA H100 80GB HBM3``, or None."""
    if not name:
        return None
    n = name.lower().replace("-", " ").replace("_", " ")
    for spec in GPU_TABLE:
        if all(m in n for m in spec.match) and not any(x in n for x in spec.exclude):
            return spec
    return None


def _pos(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def device_peaks(device: Mapping[str, Any] | None) -> DevicePeaks:
    """Peaks for the roofline from ``meta["device"]``.

    Order: on a CPU, the run's measured peaks; on a GPU, the peaks meta.json states,
    then the table row for the device name, then the measured peaks.
    """
    device = dict(device or {})
    name = str(device.get("name") or "unknown")
    kind = str(device.get("kind") or "unknown")
    measured = dict(device.get("measured") or {})
    m_flops, m_bw = _pos(measured.get("matmul_flops")), _pos(measured.get("copy_bandwidth_bytes_per_s"))
    meta_flops, meta_bw = _pos(device.get("peak_flops")), _pos(device.get("peak_bandwidth_bytes_per_s"))
    if kind == "cpu":
        if m_flops or m_bw:
            dtype = measured.get("matmul_dtype")
            return DevicePeaks(
                name,
                kind,
                m_flops or meta_flops,
                m_bw or meta_bw,
                "measured",
                f"measured at run start ({dtype or 'unknown dtype'} matmul, memory copy)",
            )
        return DevicePeaks(name, kind, meta_flops, meta_bw, "meta" if meta_flops or meta_bw else "none")
    if meta_flops and meta_bw:
        return DevicePeaks(name, kind, meta_flops, meta_bw, str(device.get("peaks_source") or "meta"))
    spec = lookup_gpu(name)
    if spec is not None:
        return DevicePeaks(name, kind, spec.fp16_flops, spec.bandwidth, "table", spec.source)
    if m_flops or m_bw:
        return DevicePeaks(name, kind, m_flops, m_bw, "measured", "measured at run start")
    return DevicePeaks(name, kind, meta_flops, meta_bw, "meta" if meta_flops or meta_bw else "none")
