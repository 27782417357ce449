"""Rules that turn attributed latency and hardware signals into ranked verdicts.

Each class has a share threshold (fraction of summed E2E attributed to it by
:mod:`~bottleneck_map.analyzer.attribution`) and a corroboration check on
independent signals (engine counters, roofline, agent samples). A class *fires* when
its share reaches the threshold; its confidence grows with the margin and the
corroboration. ``balanced`` is the verdict when no class reaches :data:`CONFIDENT`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bottleneck_map.analyzer import engine_series
from bottleneck_map.analyzer.result import CLASSES, Evidence, Verdict
from bottleneck_map.analyzer.roofline import ROOF_NEAR

CONFIDENT = 0.5  # confidence at or above which a verdict is stated as the answer

# Share of summed E2E latency at which each class fires.
SHARE_THRESHOLD: dict[str, float] = {
    "queueing": 0.25,
    "kv_cache_capacity": 0.15,
    "prefill_compute": 0.30,
    "decode_memory_bandwidth": 0.55,
    "decode_compute": 0.55,
    "pcie_transfer": 0.10,
    "host_overhead": 0.25,
    "tokenization": 0.15,
    "streaming": 0.15,
    "power_thermal": 0.05,
}
KV_HIGH = 0.90  # p95 KV usage that corroborates kv_cache_capacity
BW_UTIL_HIGH = 0.5  # decode bandwidth utilisation (of peak) that corroborates decode_memory_bandwidth
FLOPS_UTIL_HIGH = 0.4  # prefill FLOP/s utilisation that corroborates prefill_compute
HOST_STEP_FRAC_HIGH = 0.3  # non-forward fraction of step time that corroborates host_overhead
CPU_SATURATED = 0.9  # a process or core at this CPU ratio counts as saturated
CLOCK_LOW = 0.9  # SM clock below this fraction of max while busy
THROTTLED_FRAC_HIGH = 0.2  # busy samples with a throttle reason
# Admission limits: when one binds (confident, its engine counters corroborating) it ranks above the
# per-step classes, because it caps the batch every step runs at and so the per-step figures with it.
ADMISSION_LIMITS = ("queueing", "kv_cache_capacity")
PER_STEP = ("prefill_compute", "decode_memory_bandwidth", "decode_compute", "host_overhead")
LIMIT_BINDS = 0.5  # corroboration at which an admission limit counts as binding


@dataclass
class Signals:
    """Everything the rules look at: class shares plus measured engine/hardware figures."""

    share: dict[str, float]
    values: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)

    def get(self, key: str) -> Any:
        v = self.values.get(key)
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1e3:.1f} ms" if abs(x) < 1 else f"{x:.2f} s"


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suf}{unit}"
    return f"{x:.2f} {unit}".strip()


def _share_ev(sig: Signals, cls: str, what: str) -> Evidence:
    v = sig.share.get(cls, 0.0)
    return Evidence(
        f"{cls}_share_of_e2e", v, "ratio", f"{what}: {_pct(v)} of summed end-to-end latency", SHARE_THRESHOLD[cls]
    )


Rule = Callable[[Signals], tuple[float, list[Evidence], str, list[str]]]


def _queueing(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "queueing", "waiting for admission (batch slots / token budget)")]
    corr = 0.0
    slots = sig.get("slots_full_frac")
    waiting = sig.get("mean_waiting")
    if sig.get("queue_p95_s") is not None:
        ev.append(Evidence("queue_p95_s", sig.get("queue_p95_s"), "s", f"p95 queue time {_s(sig.get('queue_p95_s'))}"))
    from_samples = sig.get("engine_source") == "samples"
    if waiting is not None:
        per = "engine sample (num_requests_waiting)" if from_samples else "step"
        ev.append(
            Evidence("mean_num_waiting", waiting, "count", f"{waiting:.1f} requests waiting on average per {per}")
        )
        corr += 0.5 if waiting >= 1 else 0.0
    if slots is not None:
        if from_samples:
            cap = sig.get("running_cap") or 0
            whence = "max_num_seqs" if sig.get("cap_source") == "max_num_seqs" else "the most seen running"
            text = f"num_requests_running at its cap ({cap:.0f}, {whence}) in {_pct(slots)} of engine samples with requests waiting"
        else:
            text = f"running = max_num_seqs ({sig.engine.get('max_num_seqs')}) in {_pct(slots)} of steps with requests waiting"
        kv_cap = sig.get("kv_request_capacity")
        if from_samples and sig.get("cap_source") != "max_num_seqs" and kv_cap is not None and cap <= np.ceil(kv_cap):
            # the most ever running is what the KV cache holds: that is the limit, not a batch slot
            text += (
                f", no more than the KV cache holds ({kv_cap:.1f} requests of the mean length): not a batch-slot limit"
            )
            slots = 0.0
        ev.append(Evidence("slots_full_fraction", slots, "ratio", text))
        corr += 0.5 * min(slots / 0.5, 1.0)
    kv = sig.get("kv_usage_p95")
    if kv is not None and kv < KV_HIGH and slots and slots > 0.5:
        rec = f"raise --max-num-seqs (batch slots are full while KV usage p95 is only {_pct(kv)}); if that does not help, add replicas"
        knobs = ["--max-num-seqs", "replicas"]
    elif slots and slots > 0.5:
        rec = f"arrivals exceed service rate with batch slots full and KV usage p95 at {_pct(kv)}: add replicas or lower the request rate (more slots would only preempt)"
        knobs = ["replicas"]
    else:
        rec = "requests waited while batch slots were free (token budget spent or behind others): add replicas or lower the request rate"
        knobs = ["replicas", "--max-num-batched-tokens"]
    return min(corr, 1.0), ev, rec, knobs


def _kv(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "kv_cache_capacity", "blocked on KV blocks, preempted or recomputing")]
    corr = 0.0
    kv95, kvmax, full = sig.get("kv_usage_p95"), sig.get("kv_usage_max"), sig.get("kv_time_full_frac")
    from_samples = sig.get("engine_source") == "samples"
    if kv95 is not None:
        of = "of engine samples (kv_cache_usage_ratio)" if from_samples else "of step time"
        ev.append(
            Evidence(
                "kv_usage_p95",
                kv95,
                "ratio",
                f"KV cache usage p95 {_pct(kv95)}, max {_pct(kvmax)}, at or above 95% for {_pct(full)} {of}",
                KV_HIGH,
            )
        )
        corr += 0.5 if kv95 >= KV_HIGH else 0.0
    pre = sig.get("preemptions") or 0
    counter = sig.get("preemptions_counter")
    if from_samples and counter is not None:
        text = f"num_preemptions_total rose by {counter:.0f} over the run (engine samples); {sig.get('preempted_requests') or 0} requests carry preemption stamps"
    else:
        text = f"{pre} preemptions of {sig.get('preempted_requests') or 0} requests; requeue {_s(sig.get('requeue_s'))}, recompute {_s(sig.get('recompute_s'))} summed"
    ev.append(Evidence("preemptions", float(pre), "count", text))
    corr += 0.5 if pre > 0 else 0.0
    cap, reached = sig.get("kv_request_capacity"), sig.get("kv_capacity_reached_frac")
    if cap is not None and reached is not None and cap < (sig.engine.get("max_num_seqs") or np.inf):
        per = "inferred-step" if from_samples else "step"
        ev.append(
            Evidence(
                "kv_capacity_reached_fraction",
                reached,
                "ratio",
                f"the KV cache holds about {cap:.1f} requests of the mean length ({sig.engine.get('num_kv_blocks')} "
                f"blocks of {sig.engine.get('block_size')} tokens); that many were running in {_pct(reached)} "
                f"of {per} time with requests waiting and a batch slot free",
                0.5,
            )
        )
        corr += 0.5 if reached >= 0.5 else 0.0
    mode = sig.engine.get("preemption_mode")
    rec = "raise --num-kv-blocks (more GPU memory for KV), or lower --max-num-seqs so admitted requests fit"
    if mode == "recompute" and (sig.get("recompute_s") or 0) > 0:
        rec += "; long prompts being recomputed: try --preemption-mode swap if PCIe is idle"
    return min(corr, 1.0), ev, rec, ["--num-kv-blocks", "--max-num-seqs", "--preemption-mode"]


def _prefill(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "prefill_compute", "prefill compute (own prompt, or other prompts stalling decodes)")]
    own = sig.get("prefill_stage_share")
    if sig.get("inferred_steps"):
        total = sig.share.get("prefill_compute", 0.0)
        ev[0].text = (
            f"prefill compute: {_pct(total)} of summed end-to-end latency, in prompts' own prefill and in decodes "
            "waiting on it (the server's series do not tell the two apart)"
        )
    elif own is not None:
        total = sig.share.get("prefill_compute", 0.0)
        ev[0].text = (
            f"prefill compute: {_pct(total)} of summed end-to-end latency: {_pct(min(own, total))} in requests' own "
            f"prefill steps, {_pct(max(total - own, 0.0))} decodes and prompts waiting on other requests' prefills"
        )
    corr = 0.0
    pst = sig.get("prefill_share_of_ttft")
    if pst is not None:
        ev.append(
            Evidence(
                "prefill_share_of_ttft",
                pst,
                "ratio",
                f"prefill is {_pct(pst)} of TTFT (p50 TTFT {_s(sig.get('ttft_p50_s'))}, mean prompt {sig.get('mean_prompt_tokens') or 0:.0f} tokens)",
            )
        )
        corr += 0.3 if pst >= 0.5 else 0.0
    ai, ridge, util = sig.get("prefill_ai"), sig.get("ridge"), sig.get("prefill_flops_util")
    if ai is not None:
        bound = "compute-bound" if ridge is not None and ai >= ridge else "memory-bound"
        ev.append(
            Evidence(
                "prefill_arithmetic_intensity",
                ai,
                "FLOP/byte",
                f"prefill steps: {ai:.0f} FLOP/byte vs ridge point {ridge or 0:.0f} ({bound}), {_num(sig.get('prefill_flops_per_s'), 'FLOP/s')} = {_pct(util)} of peak",
            )
        )
        corr += 0.4 if ridge is not None and ai >= ridge else 0.0
        corr += 0.3 if util is not None and util >= FLOPS_UTIL_HIGH else 0.0
    sm, tensor = sig.get("sm_active"), sig.get("tensor_active")
    if sm is not None or tensor is not None:
        ev.append(
            Evidence(
                "sm_active",
                sm,
                "ratio",
                f"GPM SM activity {_pct(sm)}, tensor pipes {_pct(tensor)} while steps ran (agent samples)",
                FLOPS_UTIL_HIGH,
            )
        )
        corr += 0.2 if max(sm or 0.0, tensor or 0.0) >= FLOPS_UTIL_HIGH else 0.0
    if sig.engine.get("chunked_prefill"):
        rec = "lower --max-num-batched-tokens so long prompts are split into smaller chunks and decodes are not stalled"
        knobs = ["--max-num-batched-tokens"]
    else:
        rec = "enable chunked prefill (--enable-chunked-prefill) so long prompts stop stalling decodes"
        knobs = ["--enable-chunked-prefill", "--max-num-batched-tokens"]
    if not sig.engine.get("enable_prefix_caching"):
        rec += "; enable prefix caching for shared prefixes"
        knobs.append("--enable-prefix-caching")
    return min(corr, 1.0), ev, rec, knobs


def _batch_advice(sig: Signals) -> str | None:
    """ "raise --max-num-seqs" advice, only when batch slots bound: running reached it while requests waited."""
    mns, peak, waited = sig.engine.get("max_num_seqs"), sig.get("running_max"), sig.get("waiting_max")
    if mns and peak is not None and peak >= mns and (waited or 0) > 0:
        return f"raise --max-num-seqs (running reached max_num_seqs={mns} while requests waited)"
    return None


def _batch_limit_note(sig: Signals) -> str:
    """Why no larger batch is advised, from the engine counters."""
    mns, peak = sig.engine.get("max_num_seqs"), sig.get("running_max")
    if peak is None:
        return ""
    cap = f" of max_num_seqs={mns}" if mns else ""
    if not (sig.get("waiting_max") or 0) > 0:
        return f"the engine batched every request it had (peak {peak:.0f} running{cap}; no step left a request waiting)"
    return f"peak {peak:.0f} running{cap}: admission, not --max-num-seqs, held the batch back"


def _decode_near_roof(sig: Signals) -> str | None:
    """Why decode_memory_bandwidth cannot be stated with confidence, or None when the steps are near the roof."""
    util50 = sig.get("decode_step_bw_util_p50")
    if util50 is None:
        return "no decode step has a roofline (model shape or device peaks unknown)"
    if util50 < ROOF_NEAR:
        return f"the median decode step reaches {_pct(util50)} of peak bandwidth, under the {_pct(ROOF_NEAR)} at which a step counts as bandwidth-bound"
    return None


def _decode(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "decode_memory_bandwidth", "decode forward steps at or near the bandwidth roofline")]
    corr = 0.0
    ai, ridge, bw, util = (
        sig.get("decode_ai"),
        sig.get("ridge"),
        sig.get("decode_bytes_per_s"),
        sig.get("decode_bw_util"),
    )
    if ai is not None:
        mem = ridge is not None and ai < ridge
        ev.append(
            Evidence(
                "decode_arithmetic_intensity",
                ai,
                "FLOP/byte",
                f"decode steps: {ai:.1f} FLOP/byte vs ridge point {ridge or 0:.0f} ({'memory-bound' if mem else 'compute-bound'})",
            )
        )
        corr += 0.4 if mem else 0.0
    # The typical (median) decode step: stalled outliers cannot hide a step running at the roofline.
    bw50, util50 = sig.get("decode_step_bytes_per_s_p50"), sig.get("decode_step_bw_util_p50")
    if bw50 is not None:
        near = util50 is not None and util50 >= ROOF_NEAR
        ev.append(
            Evidence(
                "decode_step_bandwidth_utilization_p50",
                util50,
                "ratio",
                f"the median decode step moves {_num(bw50, 'B/s')} = {_pct(util50)} of peak bandwidth {_num(sig.get('peak_bw'), 'B/s')} ({sig.get('peaks_source')}); a step counts as bandwidth-bound at {_pct(ROOF_NEAR)} or more",
                ROOF_NEAR,
            )
        )
        corr += 0.4 if near else 0.0
    # The aggregate figure only when it says something the median does not (a different percentage).
    if bw is not None and (util50 is None or util is None or round(100 * util) != round(100 * util50)):
        ev.append(
            Evidence(
                "decode_bandwidth_utilization",
                util,
                "ratio",
                f"over all decode forward time decode moves {_num(bw, 'B/s')} = {_pct(util)} of peak bandwidth",
                ROOF_NEAR,
            )
        )
    near_frac = sig.get("decode_near_roof_frac")
    if near_frac is not None:
        ev.append(
            Evidence(
                "decode_near_roof_fraction",
                near_frac,
                "ratio",
                f"{_pct(near_frac)} of decode step time is in steps at or above {_pct(ROOF_NEAR)} of their roofline speed",
                ROOF_NEAR,
            )
        )
    dram = sig.get("dram_util")
    if dram is not None:
        ev.append(
            Evidence("dram_bw_util", dram, "ratio", f"GPM DRAM bandwidth utilisation {_pct(dram)} (agent samples)")
        )
        corr += 0.2 if dram >= BW_UTIL_HIGH else 0.0
    if sig.get("tpot_p50_s") is not None:
        ev.append(
            Evidence(
                "tpot_p50_s",
                sig.get("tpot_p50_s"),
                "s",
                f"TPOT p50 {_s(sig.get('tpot_p50_s'))} at mean decode batch {sig.get('decode_batch') or 0:.1f}",
            )
        )
    more = _batch_advice(sig)
    if more:
        rec = f"{more} so each weight read serves more sequences; otherwise quantize weights/KV cache or use a GPU with more memory bandwidth"
        knobs = ["--max-num-seqs", "quantization"]
    else:
        note = _batch_limit_note(sig)
        rec = "quantize weights/KV cache or use a GPU with more memory bandwidth" + (
            f"; {note}, so more concurrent requests would share each weight read" if note else ""
        )
        knobs = ["quantization"]
    return min(corr, 1.0), ev, rec, knobs


def _decode_compute(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "decode_compute", "decode forward steps at or near the compute roofline (large batches)")]
    corr = 0.0
    ai, ridge, util = sig.get("decode_ai"), sig.get("ridge"), sig.get("decode_flops_util")
    if ai is not None:
        above = ridge is not None and ai >= ridge
        ev.append(
            Evidence(
                "decode_arithmetic_intensity",
                ai,
                "FLOP/byte",
                f"decode steps: {ai:.1f} FLOP/byte vs ridge point {ridge or 0:.0f} ({'compute-bound' if above else 'memory-bound'})",
                ridge,
            )
        )
        corr += 0.5 if above else 0.0
    if util is not None:
        ev.append(
            Evidence(
                "decode_flops_utilization",
                util,
                "ratio",
                f"decode runs {_num(sig.get('decode_flops_per_s'), 'FLOP/s')} = {_pct(util)} of peak; a step counts as compute-bound at {_pct(ROOF_NEAR)} or more",
                ROOF_NEAR,
            )
        )
        corr += 0.5 if util >= ROOF_NEAR else 0.0
    rec = "decode batches are large enough that matmuls, not weight reads, bound each step: lower-precision matmuls (FP8/INT8) or more FLOP/s; lower --max-num-seqs if TPOT matters more than throughput"
    return min(corr, 1.0), ev, rec, ["quantization", "--max-num-seqs"]


def _decode_compute_gate(sig: Signals) -> str | None:
    """decode_compute needs the decode steps above the ridge point."""
    ai, ridge = sig.get("decode_ai"), sig.get("ridge")
    if ai is None or ridge is None:
        return "no decode roofline (model shape or device peaks unknown)"
    if ai < ridge:
        return f"decode steps average {ai:.1f} FLOP/byte, under the ridge point {ridge:.0f}: bandwidth bounds them, not compute"
    return None


def _pcie(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "pcie_transfer", "KV swap between host and device")]
    corr = 0.0
    sb, bw = sig.get("swap_bytes"), sig.get("swap_bytes_per_s")
    ev.append(
        Evidence(
            "swap_bytes",
            sb,
            "bytes",
            f"{_num(sb, 'B')} swapped in {_s(sig.get('swap_s'))} of step time ({_num(bw, 'B/s')})",
        )
    )
    corr += 0.6 if sb else 0.0
    pcie = sig.get("pcie_bytes_per_s")
    if pcie is not None:
        ev.append(
            Evidence("pcie_bytes_per_s", pcie, "bytes/s", f"PCIe TX+RX {_num(pcie, 'B/s')} on average (agent samples)")
        )
        corr += 0.4
    rec = "swapping KV over PCIe costs more than it saves: use --preemption-mode recompute for short prompts, or raise --num-kv-blocks / lower --max-num-seqs to avoid preemption"
    return min(corr, 1.0), ev, rec, ["--preemption-mode", "--num-kv-blocks", "--swap-space"]


def _host_kind(sig: Signals) -> str | None:
    """Which overhead holds the most step time: "forward" (forward passes off both rooflines), "host"
    (schedule/prepare/sample/postprocess) or "idle" (no step running while requests were in flight)."""
    parts = {
        "forward": sig.get("forward_overhead_frac") or 0.0,
        "host": sig.get("host_frac_of_step") or 0.0,
        "idle": sig.get("idle_frac") or 0.0,
    }
    kind = max(parts, key=parts.get)
    return kind if parts[kind] > 0 else None


def _host(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "host_overhead", "host work in steps, forward passes off both rooflines, idle gaps")]
    corr = 0.0
    hf = sig.get("host_frac_of_step")
    if hf is not None:
        ev.append(
            Evidence(
                "host_fraction_of_step_time",
                hf,
                "ratio",
                f"schedule+prepare+sample+postprocess (outside the forward pass) = {_pct(hf)} of step time",
                HOST_STEP_FRAC_HIGH,
            )
        )
        corr += 0.5 if hf >= HOST_STEP_FRAC_HIGH else 0.0
    fo, eff = sig.get("forward_overhead_frac"), sig.get("roof_efficiency")
    if fo is not None and eff is not None:
        ev.append(
            Evidence(
                "forward_off_roof_fraction",
                fo,
                "ratio",
                f"{_pct(fo)} of step time is in forward passes under {_pct(ROOF_NEAR)} of their roofline speed (near neither the bandwidth nor the compute roof); all forward passes together run at {_pct(eff)} of it",
                HOST_STEP_FRAC_HIGH,
            )
        )
        corr += 0.4 if fo >= HOST_STEP_FRAC_HIGH else 0.0
    util50, futil = sig.get("decode_step_bw_util_p50"), sig.get("decode_flops_util")
    if util50 is not None and util50 < ROOF_NEAR:
        ev.append(
            Evidence(
                "decode_step_bandwidth_utilization_p50",
                util50,
                "ratio",
                f"the median decode step reaches {_pct(util50)} of peak bandwidth and decode {_pct(futil)} of peak FLOP/s: under the {_pct(ROOF_NEAR)} at which a step counts as bound by either",
                ROOF_NEAR,
            )
        )
    idle = sig.get("idle_frac")
    if idle is not None:
        ev.append(
            Evidence(
                "idle_fraction", idle, "ratio", f"no step running for {_pct(idle)} of the time requests were in flight"
            )
        )
        corr += 0.3 if idle >= 0.2 else 0.0
    cpu = sig.get("proc_cpu")
    if cpu is not None:
        ev.append(
            Evidence("engine_process_cpu", cpu, "ratio", f"engine process at {_pct(cpu)} of a core", CPU_SATURATED)
        )
        corr += 0.2 if cpu >= CPU_SATURATED else 0.0
    kind = _host_kind(sig)
    more = _batch_advice(sig)
    batch = more or _batch_limit_note(sig)
    if kind == "forward":
        rec = "forward passes are bound by framework/launch overhead or matrices too small for the hardware, not by bandwidth or compute: fewer, larger kernels (CUDA graphs, torch.compile, fused kernels) and more sequences per step"
        knobs = ["cuda-graphs", "batch size"]
    elif kind == "idle":
        rec = "the engine sat idle between steps while requests were in flight: overlap scheduling with the forward pass (asynchronous output processing), check what the engine loop waits on"
        knobs = ["async output processing"]
    else:
        rec = "cut per-step host work outside the forward pass: asynchronous output processing / multi-step scheduling, fewer Python steps; profile the scheduler and sampler"
        knobs = ["async output processing", "cuda-graphs"]
    if batch:
        rec += f"; {batch}"
    if kind == "forward" and sig.engine.get("device") == "cpu":
        rec += "; on a CPU, other processes on the same cores stretch steps the same way: compare with the cores idle"
    if more:
        knobs.insert(0, "--max-num-seqs")
    return min(corr, 1.0), ev, rec, knobs


def _tokenization(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "tokenization", "tokenizing prompts (and waiting for a tokenizer)")]
    corr = 0.5
    if sig.get("tokenize_p95_s") is not None:
        ev.append(
            Evidence(
                "tokenize_p95_s",
                sig.get("tokenize_p95_s"),
                "s",
                f"p95 tokenize {_s(sig.get('tokenize_p95_s'))}, p95 wait before tokenizing {_s(sig.get('receive_p95_s'))}",
            )
        )
    cpu = sig.get("cpu_max_core")
    if cpu is not None:
        ev.append(Evidence("cpu_max_core", cpu, "ratio", f"busiest CPU core at {_pct(cpu)}", CPU_SATURATED))
        corr += 0.5 if cpu >= CPU_SATURATED else 0.0
    rec = "use a fast (Rust) tokenizer and more tokenizer workers, or tokenize on the client; cache tokenized system prompts"
    return min(corr, 1.0), ev, rec, ["tokenizer", "--tokenizer-workers"]


def _streaming(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "streaming", "from last token produced to last byte delivered")]
    corr = 0.5
    if sig.get("streaming_p95_s") is not None:
        ev.append(
            Evidence(
                "streaming_p95_s",
                sig.get("streaming_p95_s"),
                "s",
                f"p95 finish-to-last-byte {_s(sig.get('streaming_p95_s'))}; mean token-to-byte delay {_s(sig.get('token_to_byte_s'))}",
            )
        )
        corr += 0.5 if (sig.get("token_to_byte_s") or 0) > 0 else 0.0
    rec = "send larger streaming chunks (fewer, bigger writes), detokenize incrementally, and check the client/network for slow reads"
    return min(corr, 1.0), ev, rec, ["stream chunk size", "client"]


def _power(sig: Signals) -> tuple[float, list[Evidence], str, list[str]]:
    ev = [_share_ev(sig, "power_thermal", "forward time lost to clock throttling")]
    corr = 0.0
    frac, clk = sig.get("busy_throttled_frac"), sig.get("busy_sm_clock_ratio")
    reasons = sig.get("throttle_reasons") or {}
    if frac is not None:
        names = ", ".join(f"{k} ({v})" for k, v in reasons.items()) or "none"
        ev.append(
            Evidence(
                "busy_throttled_fraction",
                frac,
                "ratio",
                f"{_pct(frac)} of busy samples carry throttle reasons: {names}",
                THROTTLED_FRAC_HIGH,
            )
        )
        corr += 0.5 if frac >= THROTTLED_FRAC_HIGH else 0.0
    if clk is not None:
        ev.append(
            Evidence("busy_sm_clock_ratio", clk, "ratio", f"SM clock at {_pct(clk)} of max while busy", CLOCK_LOW)
        )
        corr += 0.5 if clk < CLOCK_LOW else 0.0
    if sig.get("power_w") is not None:
        ev.append(
            Evidence(
                "power_w",
                sig.get("power_w"),
                "W",
                f"power {sig.get('power_w'):.0f} W of limit {sig.get('power_limit_w') or 0:.0f} W, temperature {sig.get('temperature_c') or 0:.0f} C",
            )
        )
    rec = "clocks are throttled: check the power cap (nvidia-smi -q -d POWER, raise it with nvidia-smi -pl) and cooling/airflow; HW slowdown points at thermals or the PSU"
    return min(corr, 1.0), ev, rec, ["power cap", "cooling"]


RULES: dict[str, Rule] = {
    "queueing": _queueing,
    "kv_cache_capacity": _kv,
    "prefill_compute": _prefill,
    "decode_memory_bandwidth": _decode,
    "decode_compute": _decode_compute,
    "pcie_transfer": _pcie,
    "host_overhead": _host,
    "tokenization": _tokenization,
    "streaming": _streaming,
    "power_thermal": _power,
}


# Checks that can contradict a class whatever its share: a reason when the numbers do not support it.
GATES: dict[str, Callable[[Signals], str | None]] = {
    "decode_memory_bandwidth": _decode_near_roof,
    "decode_compute": _decode_compute_gate,
}
# Classes whose evidence rests on inferred steps when a bundle has none (a deployment's series).
INFERRED_CLASSES = ("prefill_compute", "decode_memory_bandwidth", "host_overhead", "queueing", "kv_cache_capacity")
CONTRADICTED = 0.4  # the most confidence a class gets while a gate contradicts it


def confidence(share: float, threshold: float, corroboration: float) -> float:
    """Below the threshold confidence stays under CONFIDENT; above it grows with margin and corroboration."""
    strength = share / threshold if threshold > 0 else 0.0
    if strength < 1:
        return round(0.45 * strength * (0.5 + 0.5 * corroboration), 3)
    return round(min(1.0, 0.5 + 0.25 * min(strength - 1, 1.0) + 0.25 * corroboration), 3)


def score_shares(share: Mapping[str, float], corroboration: Mapping[str, float] | None = None) -> dict[str, float]:
    """Confidence per class from shares only (used per window, with neutral corroboration)."""
    corroboration = corroboration or {}
    return {c: confidence(share.get(c, 0.0), t, corroboration.get(c, 0.5)) for c, t in SHARE_THRESHOLD.items()}


def verdicts(sig: Signals) -> list[Verdict]:
    """Every reachable class as a verdict, ranked by confidence x share; ``balanced`` first when none is confident."""
    out = []
    unknown = float(sig.get("unattributed_share") or 0.0)
    binds: set[str] = set()
    contradicted: list[Evidence] = []
    for cls, rule in RULES.items():
        if cls in sig.unreachable:
            continue
        corr, ev, rec, knobs = rule(sig)
        inferred = engine_series.evidence_text(sig.values) if cls in INFERRED_CLASSES else None
        if inferred:
            ev.append(Evidence("inferred_steps", None, "", inferred))
        share = float(sig.share.get(cls, 0.0))
        conf = confidence(share, SHARE_THRESHOLD[cls], corr)
        # Latency nobody could attribute may belong to any class: confidence is scaled by the part seen,
        # so no verdict is confident while most of the latency is unattributed.
        if unknown > 0:
            ev.append(
                Evidence(
                    "unattributed_share",
                    unknown,
                    "ratio",
                    f"{_pct(unknown)} of latency is unattributed: confidence scaled by {1 - unknown:.2f}",
                )
            )
            conf = round(conf * (1 - unknown), 3)
        gate = GATES.get(cls)
        why_not = gate(sig) if gate is not None and share >= SHARE_THRESHOLD[cls] else None
        if why_not:
            ev.append(Evidence(f"{cls}_contradicted", None, "", f"not confident: {why_not}"))
            contradicted.append(Evidence(f"{cls}_contradicted", None, "", f"{cls} is contradicted: {why_not}"))
            conf = min(conf, CONTRADICTED)
        if cls in ADMISSION_LIMITS and conf >= CONFIDENT and corr >= LIMIT_BINDS:
            binds.add(cls)
        # Rank by confidence x share (an unconfident class ranks after every confident one).
        score = round(conf * share if conf >= CONFIDENT else 0.1 * conf * share, 4)
        out.append(
            Verdict(
                cls=cls,
                score=score,
                share_of_latency=share,
                confidence=conf,
                evidence=_unique(ev),
                recommendation=rec,
                knobs=knobs,
            )
        )
    out.sort(key=lambda v: (v.confidence >= CONFIDENT, v.score, v.confidence), reverse=True)
    out = _limits_first(out, binds)
    best = max((v.confidence for v in out), default=0.0)
    if best < CONFIDENT:
        top = sorted(out, key=lambda v: v.share_of_latency, reverse=True)[:3]
        ev = [
            Evidence(
                f"{v.cls}_share_of_e2e",
                v.share_of_latency,
                "ratio",
                f"{v.cls}: {_pct(v.share_of_latency)} of latency (fires at {_pct(SHARE_THRESHOLD[v.cls])})",
                SHARE_THRESHOLD[v.cls],
            )
            for v in top
        ]
        if unknown > 0:
            ev.append(
                Evidence(
                    "unattributed_share",
                    unknown,
                    "ratio",
                    f"{_pct(unknown)} of latency (prefill and decode) cannot be attributed without step records",
                )
            )
        conf = round((1 - best) * (1 - unknown), 3)
        if contradicted:
            # A class large enough to fire whose own numbers contradict it: nothing can be stated confidently.
            ev.extend(contradicted)
            conf = min(conf, CONTRADICTED)
        bal = Verdict(
            cls="balanced",
            score=conf,
            share_of_latency=0.0,
            confidence=conf,
            evidence=ev,
            recommendation=(
                "collect step records (engine step tracing) to tell compute, bandwidth and host overhead apart"
                if unknown >= 0.5
                else "a share large enough to fire is contradicted by its own roofline numbers: check the device peaks "
                "(meta.device; measured at the run's start on a CPU) and rerun on an idle machine"
                if contradicted
                else "no single constraint dominates; scale out for more throughput, or tune for the largest share above"
            ),
            knobs=[],
        )
        out.insert(0, bal)
    _rank_notes(out, binds)
    assert all(v.cls in CLASSES for v in out)
    return out


def _unique(ev: list[Evidence]) -> list[Evidence]:
    """Evidence lines without repeats (the same sentence from two signals says nothing new)."""
    seen: set[str] = set()
    return [e for e in ev if not (e.text in seen or seen.add(e.text))]


def _limits_first(ranked: list[Verdict], binds: set[str]) -> list[Verdict]:
    """Binding admission limits move ahead of the per-step classes ranked above them."""
    first_step = next((i for i, v in enumerate(ranked) if v.cls in PER_STEP and v.confidence >= CONFIDENT), None)
    if first_step is None or not binds:
        return ranked
    moved = [v for v in ranked[first_step:] if v.cls in binds]
    return ranked[:first_step] + moved + [v for v in ranked[first_step:] if v.cls not in binds]


def _rank_notes(ranked: list[Verdict], binds: set[str]) -> None:
    """Say why each verdict after the first ranks where it does (rank_note)."""
    if not ranked:
        return
    top = ranked[0]
    for v in ranked[1:]:
        if any(e.metric == f"{v.cls}_contradicted" for e in v.evidence):
            v.rank_note = "contradicted by its own evidence: not a verdict"
        elif v.confidence < CONFIDENT:
            v.rank_note = (
                f"under its {_pct(SHARE_THRESHOLD.get(v.cls))} share threshold (or too little evidence): not a verdict"
            )
        elif top.cls == "balanced":
            v.rank_note = ""
        elif top.cls in binds and v.cls in PER_STEP:
            v.rank_note = f"ranked after {top.cls}: that limit binds and caps the batch every step runs at"
        elif v.confidence > top.confidence:
            v.rank_note = f"ranked after {top.cls}, which explains more latency (rank = confidence x share)"
        else:
            v.rank_note = f"ranked after {top.cls} (rank = confidence x share)"
