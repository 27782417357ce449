"""A small continuous-batching simulator that writes realistic synthetic bundles.

Used by the dashboard tests and ``benchmarks/bench_dashboard.py``. Requests
arrive as a Poisson process in three workload classes, are tokenized, wait for a
batch slot, are prefilled in chunks under a token budget, decode one token per
step, are preempted (recompute) when KV blocks run out, and stream their tokens
back. Steps record the request ids they served, so every request's path through
the interleaved batches can be reconstructed; samples follow the step activity
(with a power-capped stretch so throttling shows up).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bottleneck_map.bundle import BundleWriter, new_meta
from bottleneck_map.schema import CLOCK_EVENT_BITS

MODEL = {
    "name": "synthetic-llama-1b",
    "architecture": "LlamaForCausalLM",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 32000,
    "tie_word_embeddings": True,
    "dtype": "bfloat16",
    "dtype_bytes": 2,
    "num_parameters": 1_100_000_000,
    "max_position_embeddings": 4096,
}
DEVICE = {
    "kind": "cuda",
    "name": "NVIDIA H100 80GB HBM3",
    "peak_flops": 989e12,
    "peak_bandwidth_bytes_per_s": 3.35e12,
    "peaks_source": "table",
    "measured": {"copy_bandwidth_bytes_per_s": 2.9e12, "matmul_flops": 7.1e14, "matmul_dtype": "bfloat16"},
}
CLASSES = {  # name: (share, prompt median, output median)
    "chat": (0.6, 180, 48),
    "rag": (0.25, 900, 24),
    "agentic": (0.15, 500, 12),
}


@dataclass
class _Req:
    rid: str
    cls: str
    prompt: int
    output: int
    arrival: int
    queued: int
    target: int = 0  # tokens to prefill: the prompt, plus generated tokens after a preemption
    prefilled: int = 0
    generated: int = 0
    recomputed: int = 0
    scheduled: list[int] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    first_scheduled: int | None = None


def make_bundle(
    path: str | Path,
    *,
    n_requests: int = 300,
    rate: float = 40.0,
    max_num_seqs: int = 32,
    max_num_batched_tokens: int = 2048,
    num_kv_blocks: int = 600,
    block_size: int = 16,
    sample_interval_s: float = 0.1,
    length_scale: float = 1.0,
    seed: int = 0,
    t0_ns: int = 1_000_000_000_000,
) -> Path:
    """Simulate a run and write it as a closed bundle at ``path``; return the path."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    names = list(CLASSES)
    shares = np.array([CLASSES[c][0] for c in names])
    cls_idx = rng.choice(len(names), size=n_requests, p=shares / shares.sum())
    gaps = rng.exponential(1.0 / rate, size=n_requests)
    arrivals = t0_ns + np.cumsum(gaps * 1e9).astype(np.int64)
    prompts = np.array([CLASSES[names[i]][1] for i in cls_idx]) * rng.lognormal(0, 0.5, n_requests) * length_scale
    outputs = np.array([CLASSES[names[i]][2] for i in cls_idx]) * rng.lognormal(0, 0.6, n_requests) * length_scale
    prompts = np.clip(prompts, 4, 3000).astype(int)
    outputs = np.clip(outputs, 2, 1000).astype(int)
    tok_ns = (2000 + prompts * 400).astype(np.int64)  # tokenizer CPU time

    reqs = [
        _Req(
            rid=f"req-{i:06d}",
            cls=names[cls_idx[i]],
            prompt=int(prompts[i]),
            output=int(outputs[i]),
            arrival=int(arrivals[i]),
            queued=int(arrivals[i] + 20_000 + tok_ns[i]),
            target=int(prompts[i]),
        )
        for i in range(n_requests)
    ]
    meta = new_meta(
        "synthetic",
        model=MODEL,
        device=DEVICE,
        engine={
            "block_size": block_size,
            "num_kv_blocks": num_kv_blocks,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "chunked_prefill": True,
            "enable_prefix_caching": False,
            "preemption_mode": "recompute",
            "swap_space_gib": 0,
            "device": "cuda",
            "dtype": "bfloat16",
            "max_model_len": 4096,
        },
        workload={"description": f"synthetic poisson {rate}/s, classes {names}", "num_requests": n_requests},
        capabilities={"steps": True, "samples": True, "streaming": True},
    )
    meta["clock"]["origin_monotonic_ns"] = t0_ns
    writer = BundleWriter(path, meta, flush_interval_s=3600, flush_rows=50_000)

    pending = deque(sorted(reqs, key=lambda r: r.queued))
    queued_sorted = np.array([r.queued for r in pending], dtype=np.int64)
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    t = int(pending[0].queued)
    step_id = 0
    activity: list[tuple[int, int, float, float]] = []  # (start, end, prefill share, busy)
    while pending or waiting or running:
        while pending and pending[0].queued <= t:
            waiting.append(pending.popleft())
        if not waiting and not running:
            t = int(pending[0].queued)
            continue
        start = t
        budget = max_num_batched_tokens
        ids, qlens, clens, isp = [], [], [], []
        decodes = [r for r in running if r.prefilled >= r.target]
        prefills = [r for r in running if r.prefilled < r.target]
        for r in decodes:
            ids.append(r.rid)
            qlens.append(1)
            clens.append(r.prompt + r.generated)
            isp.append(False)
            budget -= 1
        # admit from the queue while slots and budget allow
        while waiting and len(running) < max_num_seqs and budget > 0:
            r = waiting.popleft()
            if r.first_scheduled is None:
                r.first_scheduled = start
            elif r.preempted and len(r.resumed) < len(r.preempted):
                r.resumed.append(start)
            r.scheduled.append(start)
            running.append(r)
            prefills.append(r)
        n_prefill_tokens = 0
        n_prefill_seqs = 0
        for r in prefills:
            if budget <= 0:
                break
            todo = r.target - r.prefilled
            chunk = min(todo, budget)
            budget -= chunk
            ids.append(r.rid)
            qlens.append(chunk)
            clens.append(r.prefilled + chunk)
            isp.append(True)
            n_prefill_tokens += chunk
            n_prefill_seqs += 1
            r.prefilled += chunk
        # KV accounting and preemption (newest first, recompute)
        kv_used = sum(math.ceil((r.prompt + r.generated + 1) / block_size) for r in running)
        n_preempted = 0
        while kv_used > num_kv_blocks and len(running) > 1:
            victim = running.pop()
            kv_used -= math.ceil((victim.prompt + victim.generated + 1) / block_size)
            victim.preempted.append(start)
            victim.recomputed += victim.generated
            victim.target = victim.prompt + victim.generated
            victim.prefilled = 0
            waiting.appendleft(victim)
            n_preempted += 1
            if victim.rid in ids:
                k = ids.index(victim.rid)
                if isp[k]:
                    n_prefill_tokens -= qlens[k]
                    n_prefill_seqs -= 1
                for lst in (ids, qlens, clens, isp):
                    del lst[k]
        n_decode = sum(1 for p in isp if not p)
        ctx_sum = sum(c for c, p in zip(clens, isp, strict=True) if not p)
        sched = 60_000 + 800 * len(ids)
        prep = 40_000 + 300 * len(ids)
        fwd = int(2_500_000 + 1_800 * n_prefill_tokens + 20_000 * n_decode + 8 * ctx_sum)
        samp = 30_000 + 2_000 * len(ids)
        post = 20_000 + 1_500 * len(ids)
        end = start + sched + prep + fwd + samp + post
        served = set(ids)
        for r in running:
            if r.rid in served and r.prefilled >= r.target:
                r.generated += 1
                r.tokens.append(end)
        done = [r for r in running if r.generated >= r.output]
        running = [r for r in running if r.generated < r.output]
        writer.add_step(
            {
                "step_id": step_id,
                "instance": "synthetic-0",
                "start_ns": start,
                "end_ns": end,
                "schedule_ns": sched,
                "prepare_ns": prep,
                "forward_ns": fwd,
                "sample_ns": samp,
                "postprocess_ns": post,
                "swap_ns": None,
                "num_prefill_tokens": n_prefill_tokens,
                "num_prefill_seqs": n_prefill_seqs,
                "num_decode_seqs": n_decode,
                "num_running": len(running) + len(done),
                "num_waiting": len(waiting)
                + int(np.searchsorted(queued_sorted, end, side="right"))
                - (n_requests - len(pending)),
                "num_swapped": 0,
                "num_preempted": n_preempted,
                "kv_blocks_used": min(kv_used, num_kv_blocks),
                "kv_blocks_free": max(num_kv_blocks - kv_used, 0),
                "swap_out_bytes": 0,
                "swap_in_bytes": 0,
                "request_ids": ids,
                "query_lens": qlens,
                "context_lens": clens,
                "is_prefill": isp,
            }
        )
        activity.append((start, end, n_prefill_tokens / max(n_prefill_tokens + n_decode, 1), fwd / (end - start)))
        step_id += 1
        for r in done:
            _write_request(writer, r, rng)
        t = end + int(rng.integers(20_000, 120_000))  # host gap between steps
    _write_samples(writer, activity, sample_interval_s, rng)
    writer.close()
    return path


def _write_request(writer: BundleWriter, r: _Req, rng: np.random.Generator) -> None:
    tokens = np.asarray(r.tokens, dtype=np.int64)
    delivered = tokens + rng.integers(30_000, 400_000, size=len(tokens))
    delivered = np.maximum.accumulate(delivered)
    tok_start = r.arrival + 20_000
    writer.add_request(
        {
            "request_id": r.rid,
            "instance": "synthetic-0",
            "workload_class": r.cls,
            "finish_reason": "length",
            "prompt_tokens": r.prompt,
            "output_tokens": len(tokens),
            "max_tokens": r.output,
            "cached_prompt_tokens": 0,
            "recomputed_tokens": r.recomputed,
            "swapped_bytes": 0,
            "arrival_ns": r.arrival,
            "tokenize_start_ns": tok_start,
            "tokenize_end_ns": r.queued,
            "queued_ns": r.queued,
            "first_scheduled_ns": r.first_scheduled,
            "first_token_ns": int(tokens[0]),
            "finished_ns": int(tokens[-1]),
            "first_byte_ns": int(delivered[0]),
            "last_byte_ns": int(delivered[-1]),
            "scheduled_ns": r.scheduled,
            "preempted_ns": r.preempted,
            "resumed_ns": r.resumed,
            "token_ns": tokens.tolist(),
            "delivered_ns": delivered.tolist(),
        }
    )


def _write_samples(writer: BundleWriter, activity, interval_s: float, rng: np.random.Generator) -> None:
    if not activity:
        return
    act = np.array(activity, dtype=np.float64)
    t_start, t_end = act[0, 0], act[-1, 1]
    step = interval_s * 1e9
    edges = np.arange(t_start, t_end + step, step)
    mid = (act[:, 0] + act[:, 1]) / 2
    which = np.clip(np.searchsorted(edges, mid) - 1, 0, len(edges) - 2)
    dur = act[:, 1] - act[:, 0]
    busy = np.bincount(which, weights=dur * act[:, 3], minlength=len(edges) - 1) / step
    pre = np.bincount(which, weights=dur * act[:, 2], minlength=len(edges) - 1) / step
    busy = np.clip(busy, 0, 1)
    pre = np.clip(pre, 0, 1)
    n = len(busy)
    throttled = np.zeros(n, dtype=bool)
    throttled[int(n * 0.6) : int(n * 0.7)] = True
    cap = CLOCK_EVENT_BITS["sw_power_cap"]
    rows = []
    for i in range(n):
        ts = int(edges[i + 1])
        noise = rng.normal(0, 0.02)
        sm_max = 1.98e9
        sm = sm_max * (0.72 if throttled[i] else 1.0)
        rows.append(
            {
                "ts_ns": ts,
                "source": "nvml",
                "device": "0",
                "instance": "synthetic-0",
                "gpu_util_ratio": float(min(busy[i] + 0.05, 1.0)),
                "mem_util_ratio": float(np.clip(busy[i] * (1 - pre[i]) * 0.8 + noise, 0, 1)),
                "gpu_mem_used_bytes": 60e9,
                "gpu_mem_total_bytes": 80e9,
                "pcie_tx_bytes_per_s": float(abs(rng.normal(2e8, 3e7))),
                "pcie_rx_bytes_per_s": float(abs(rng.normal(1e8, 2e7))),
                "power_w": float(200 + 450 * busy[i] * (0.8 if throttled[i] else 1.0)),
                "power_limit_w": 700.0,
                "energy_j": float(1e5 + i * 50),
                "temperature_c": float(55 + 20 * busy[i]),
                "sm_clock_hz": sm,
                "sm_clock_max_hz": sm_max,
                "mem_clock_hz": 2.6e9,
                "mem_clock_max_hz": 2.6e9,
                "clock_event_reasons": cap if throttled[i] else 0,
                "gpm_sm_util_ratio": float(busy[i]),
                "gpm_sm_occupancy_ratio": float(np.clip(0.2 + 0.5 * busy[i] + noise, 0, 1)),
                "gpm_dram_bw_util_ratio": float(np.clip(busy[i] * (1 - pre[i]) * 0.85 + noise, 0, 1)),
                "gpm_tensor_active_ratio": float(np.clip(busy[i] * pre[i] * 0.9 + noise, 0, 1)),
                "gpm_pcie_tx_bytes_per_s": float(abs(rng.normal(2e8, 3e7))),
                "gpm_pcie_rx_bytes_per_s": float(abs(rng.normal(1e8, 2e7))),
            }
        )
        rows.append(
            {
                "ts_ns": ts,
                "source": "host",
                "instance": "synthetic-0",
                "cpu_util_ratio": float(np.clip(0.3 + 0.2 * busy[i] + noise, 0, 1)),
                "cpu_util_max_core_ratio": float(np.clip(0.6 + 0.35 * busy[i] + noise, 0, 1)),
                "load1": 2.0,
                "host_mem_used_bytes": 40e9,
                "host_mem_total_bytes": 256e9,
                "proc_cpu_ratio": float(np.clip(0.5 + 0.45 * busy[i] + noise, 0, 1.5)),
                "proc_num_threads": 24.0,
                "proc_rss_bytes": 6e9,
            }
        )
    writer.extend("samples", rows)
