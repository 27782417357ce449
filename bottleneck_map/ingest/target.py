"""What collect states about the server it watches: model, engine limits and device peaks.

A deployment's spans and series do not say which model shape ran, how many batch slots the
server had or what the device can reach; the roofline and the queueing evidence need all three.
They come from flags (``--model-config``, ``--max-num-seqs``, ``--device-name``, ``--peak-*``),
from the scraped server itself (:mod:`~bottleneck_map.ingest.scrape`), or, for a server on this
host's CPU, from measuring the CPU (``--measure-peaks``).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bottleneck_map.ingest.scrape import model_meta, read_model_config


@dataclass(frozen=True)
class TargetOptions:
    model_config: Path | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    device_name: str | None = None
    peak_flops: float | None = None
    peak_bandwidth: float | None = None
    measure_peaks: bool = False
    measure_threads: int | None = None  # CPU threads the server's engine uses (default: torch's)


@dataclass
class Target:
    model_config: dict[str, Any] | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)

    def meta_sections(self) -> dict[str, Any]:
        """Sections of ``meta.json`` known before the first span (collect_meta's keyword arguments)."""
        out: dict[str, Any] = {"engine": dict(self.engine), "device": dict(self.device)}
        if self.model_config is not None:
            out["model"] = model_meta(self.model_config, None)
        return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def describe_target(opts: TargetOptions) -> Target:
    """Resolve the options; raises ValueError naming what is wrong (an unreadable model config)."""
    t = Target()
    if opts.model_config is not None:
        t.model_config = read_model_config(opts.model_config)
    if opts.max_num_seqs:
        t.engine["max_num_seqs"] = int(opts.max_num_seqs)
    if opts.max_num_batched_tokens:
        t.engine["max_num_batched_tokens"] = int(opts.max_num_batched_tokens)
    if opts.measure_peaks:
        measured = _measure(opts.measure_threads)
        t.device = {
            "kind": "cpu",
            "name": opts.device_name or cpu_name(),
            "measured": measured,
            "peak_flops": measured["matmul_flops"],
            "peak_bandwidth_bytes_per_s": measured["copy_bandwidth_bytes_per_s"],
            "peaks_source": "measured",
        }
    elif opts.device_name or opts.peak_flops or opts.peak_bandwidth:
        name = opts.device_name or "unknown"
        t.device = {"kind": "cpu" if "cpu" in name.lower() else "gpu", "name": name}
    if opts.peak_flops:
        t.device["peak_flops"] = float(opts.peak_flops)
    if opts.peak_bandwidth:
        t.device["peak_bandwidth_bytes_per_s"] = float(opts.peak_bandwidth)
    if opts.peak_flops and opts.peak_bandwidth:
        t.device["peaks_source"] = "flags"
    return t


def _measure(threads: int | None) -> dict[str, Any]:
    """Copy bandwidth and matmul FLOP/s of this CPU with ``threads`` threads (a CPU server's engine
    may run on fewer cores than the host has: vLLM's CPU backend keeps one for its front end)."""
    import torch

    from bottleneck_map.embedded_engine.model.peaks import measure_peaks

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = measure_peaks("cpu", torch.float32, seconds=1.0)
    finally:
        torch.set_num_threads(before)
    out["threads"] = threads or before
    return out
