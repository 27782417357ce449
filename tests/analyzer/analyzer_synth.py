"""A tiny continuous-batching engine simulator that writes realistic bundles for analyzer tests.

Each knob maps to one bottleneck cause: a slow tokenizer, few batch slots under
a high arrival rate, few KV blocks (preemption by recompute or swap, with a swap
cost), long prompts with expensive prefill, expensive decode steps, host work per
step, a streaming delay, and clock throttling in the samples. The simulator is a
plain event loop over engine steps (no chunked prefill): admit waiting requests
while slots, token budget and KV blocks allow, then run one step containing the new
prefills and one decode token for every running sequence.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bottleneck_map.bundle import BundleWriter, new_meta
from bottleneck_map.schema import CLOCK_EVENT_BITS

MS = 1_000_000
US = 1_000

MODEL = {
    "name": "synthetic-llama-tiny",
    "architecture": "LlamaForCausalLM",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "vocab_size": 4096,
    "tie_word_embeddings": True,
    "dtype": "float32",
    "dtype_bytes": 4,
}


@dataclass
class Sim:
    n_requests: int = 40
    rate_per_s: float = 20.0
    prompt_tokens: int = 32
    output_tokens: int = 16
    tokenize_ns: int = 200 * US
    tokenizer_workers: int = 4
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 4096
    num_kv_blocks: int = 4096
    block_size: int = 16
    preemption_mode: str = "recompute"
    swap_ns_per_block: int = 0
    prefill_ns_per_token: int = 20 * US
    decode_base_ns: int = 4 * MS
    decode_ns_per_seq: int = 50 * US
    host_ns: int = 100 * US
    step_gap_ns: int = 0
    stream_delay_ns: int = 50 * US
    throttle: bool = False
    seed: int = 0
    device: str = "cpu"
    prefix_caching: bool = False

    def meta(self) -> dict:
        engine = {
            "block_size": self.block_size,
            "num_kv_blocks": self.num_kv_blocks,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "chunked_prefill": False,
            "enable_prefix_caching": self.prefix_caching,
            "preemption_mode": self.preemption_mode,
            "device": self.device,
            "dtype": "float32",
        }
        if self.device == "cuda":
            # A slow simulated GPU: the peaks match the simulated step times.
            device = {
                "kind": "cuda",
                "name": "NVIDIA L4",
                "peak_flops": 5e10,
                "peak_bandwidth_bytes_per_s": 5e9,
                "peaks_source": "measured",
            }
        else:
            device = {
                "kind": "cpu",
                "name": "synthetic cpu",
                "measured": {"copy_bandwidth_bytes_per_s": 5e9, "matmul_flops": 5e10, "matmul_dtype": "float32"},
            }
        return new_meta(
            "analyzer-synth",
            model=MODEL,
            engine=engine,
            device=device,
            workload={"kind": "synthetic", "n_requests": self.n_requests, "rate": self.rate_per_s},
            capabilities={"steps": True, "samples": True, "streaming": True},
        )


@dataclass
class _Req:
    i: int
    arrival: int
    prompt: int
    output: int
    tok_start: int = 0
    tok_end: int = 0
    first_sched: int | None = None
    first_token: int | None = None
    finished: int | None = None
    generated: int = 0
    blocks: int = 0
    swapped: bool = False
    prefilled: bool = False
    recompute: bool = False

    @property
    def rid(self) -> str:
        return f"r{self.i:05d}"


def simulate(sim: Sim, path: Path, *, with_steps: bool = True) -> Path:
    """Run the simulation and write the bundle at ``path``; returns ``path``."""
    rng = np.random.default_rng(sim.seed)
    gaps = rng.exponential(1e9 / sim.rate_per_s, sim.n_requests).astype(np.int64)
    t0 = 1_000_000_000_000
    arrivals = t0 + np.cumsum(gaps)
    reqs = [_Req(i, int(a), sim.prompt_tokens, sim.output_tokens) for i, a in enumerate(arrivals)]
    # Tokenizer pool: each worker takes the next request when free.
    workers = [t0] * sim.tokenizer_workers
    for r in reqs:
        k = int(np.argmin(workers))
        r.tok_start = max(r.arrival, workers[k])
        r.tok_end = r.tok_start + sim.tokenize_ns
        workers[k] = r.tok_end
    pending = deque(sorted(reqs, key=lambda r: r.tok_end))
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    swapped: deque[_Req] = deque()
    free = sim.num_kv_blocks
    events: dict[str, dict[str, list[int]]] = {r.rid: {"pre": [], "res": [], "sched": [], "tok": []} for r in reqs}
    steps = []
    now = t0
    step_id = 0
    done = 0

    def blocks_for(n_tokens: int) -> int:
        return math.ceil(n_tokens / sim.block_size)

    while done < len(reqs):
        while pending and pending[0].tok_end <= now:
            waiting.append(pending.popleft())
        if not running and not waiting and not swapped:
            now = max(now, pending[0].tok_end)
            continue
        swap_blocks = 0
        swap_in_bytes = 0
        # Swap back in first.
        while swapped and len(running) < sim.max_num_seqs and swapped[0].blocks <= free:
            r = swapped.popleft()
            free -= r.blocks
            swap_blocks += r.blocks
            swap_in_bytes += r.blocks * 4096
            r.swapped = False
            events[r.rid]["res"].append(now)
            running.append(r)
        # Admit.
        budget = sim.max_num_batched_tokens
        new: list[_Req] = []
        while waiting and len(running) + len(new) < sim.max_num_seqs and not swapped:
            r = waiting[0]
            need_tokens = r.prompt + r.generated
            need = blocks_for(need_tokens + 1)
            if need > free or need_tokens > budget:
                break
            waiting.popleft()
            free -= need
            budget -= need_tokens
            r.blocks = need
            if r.first_sched is None:
                r.first_sched = now
            elif r.recompute:
                events[r.rid]["res"].append(now)
            events[r.rid]["sched"].append(now)
            new.append(r)
        # Decode growth; preempt the newest running when blocks run out.
        decoding = [r for r in running if r.prefilled]
        swap_out_bytes = 0
        for r in list(decoding):
            if blocks_for(r.prompt + r.generated + 1) > r.blocks:
                while free < 1 and running:
                    victim = running[-1]
                    running.remove(victim)
                    if victim in decoding:
                        decoding.remove(victim)
                    events[victim.rid]["pre"].append(now)
                    if sim.preemption_mode == "swap":
                        free += victim.blocks
                        swap_blocks += victim.blocks
                        swap_out_bytes += victim.blocks * 4096
                        victim.swapped = True
                        swapped.append(victim)
                    else:
                        free += victim.blocks
                        victim.blocks = 0
                        victim.recompute = True
                        victim.prefilled = False
                        waiting.appendleft(victim)
                if r in running and free >= 1:
                    free -= 1
                    r.blocks += 1
        decoding = [r for r in running if r.prefilled]
        batch = new + decoding
        if not batch:
            now += 100 * US
            continue
        prefill_tokens = sum(r.prompt + r.generated for r in new)
        swap_ns = swap_blocks * sim.swap_ns_per_block
        fwd = sim.decode_base_ns + sim.prefill_ns_per_token * prefill_tokens + sim.decode_ns_per_seq * len(decoding)
        start = now
        end = start + sim.host_ns + swap_ns + fwd
        step = {
            "step_id": step_id,
            "start_ns": start,
            "end_ns": end,
            "schedule_ns": sim.host_ns // 2,
            "prepare_ns": sim.host_ns // 4,
            "forward_ns": fwd,
            "sample_ns": sim.host_ns // 8,
            "postprocess_ns": sim.host_ns - sim.host_ns // 2 - sim.host_ns // 4 - sim.host_ns // 8,
            "swap_ns": swap_ns or None,
            "num_prefill_tokens": prefill_tokens,
            "num_prefill_seqs": len(new),
            "num_decode_seqs": len(decoding),
            "num_running": len(running) + len(new),
            "num_waiting": len(waiting),
            "num_swapped": len(swapped),
            "num_preempted": 0,
            "kv_blocks_used": sim.num_kv_blocks - free,
            "kv_blocks_free": free,
            "swap_out_bytes": swap_out_bytes or None,
            "swap_in_bytes": swap_in_bytes or None,
            "request_ids": [r.rid for r in batch],
            "query_lens": [r.prompt + r.generated for r in new] + [1] * len(decoding),
            "context_lens": [r.prompt + r.generated for r in new] + [r.prompt + r.generated + 1 for r in decoding],
            "is_prefill": [True] * len(new) + [False] * len(decoding),
        }
        steps.append(step)
        step_id += 1
        for r in new:
            r.prefilled = True
            r.recompute = False
            running.append(r)
        for r in batch:
            r.generated += 1
            events[r.rid]["tok"].append(end)
            if r.first_token is None:
                r.first_token = end
            if r.generated >= r.output:
                r.finished = end
                running.remove(r)
                free += r.blocks
                r.blocks = 0
                done += 1
        now = end + sim.step_gap_ns

    path = Path(path)
    w = BundleWriter(path, sim.meta(), flush_interval_s=60)
    for r in reqs:
        ev = events[r.rid]
        delivered = [t + sim.stream_delay_ns * (k + 1) for k, t in enumerate(ev["tok"])]
        w.add_request(
            {
                "request_id": r.rid,
                "workload_class": ("chat", "rag")[r.i % 2],
                "finish_reason": "length",
                "prompt_tokens": r.prompt,
                "output_tokens": r.output,
                "max_tokens": r.output,
                "cached_prompt_tokens": 0,
                "arrival_ns": r.arrival,
                "tokenize_start_ns": r.tok_start,
                "tokenize_end_ns": r.tok_end,
                "queued_ns": r.tok_end,
                "first_scheduled_ns": r.first_sched,
                "first_token_ns": r.first_token,
                "finished_ns": r.finished,
                "first_byte_ns": delivered[0],
                "last_byte_ns": delivered[-1],
                "scheduled_ns": ev["sched"],
                "preempted_ns": ev["pre"],
                "resumed_ns": ev["res"],
                "token_ns": ev["tok"],
                "delivered_ns": delivered,
            }
        )
    if with_steps:
        for s in steps:
            w.add_step(s)
    else:
        w.update_meta(capabilities={"steps": False, "samples": False, "streaming": True})
    end_all = steps[-1]["end_ns"]
    ts = np.arange(t0, end_all + 100 * MS, 100 * MS)
    busy_starts = np.array([s["start_ns"] for s in steps])
    for t in ts:
        busy = bool(((busy_starts <= t) & (np.array([s["end_ns"] for s in steps]) >= t)).any())
        row = {
            "ts_ns": int(t),
            "source": "nvml",
            "device": "0",
            "gpu_util_ratio": 0.95 if busy else 0.05,
            "sm_clock_hz": (1.1e9 if sim.throttle else 1.98e9),
            "sm_clock_max_hz": 1.98e9,
            "power_w": 700.0 if sim.throttle else 450.0,
            "power_limit_w": 700.0,
            "temperature_c": 88.0 if sim.throttle else 60.0,
            "clock_event_reasons": (CLOCK_EVENT_BITS["sw_power_cap"] | CLOCK_EVENT_BITS["hw_thermal"])
            if sim.throttle
            else 0,
            "energy_j": float((t - t0) / 1e9 * 500.0),
        }
        if with_steps:
            w.add_sample(row)
        w.add_sample(
            {
                "ts_ns": int(t),
                "source": "host",
                "cpu_util_ratio": 0.3,
                "cpu_util_max_core_ratio": 0.6,
                "proc_cpu_ratio": 0.5,
            }
        )
    w.close()
    return path
