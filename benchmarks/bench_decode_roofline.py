"""Decode throughput against this machine's memory-bandwidth roofline.

A decode step must read every weight once (the embedding lookup aside: only the rows
of the batch's tokens) plus the KV cache of every sequence in the batch. The roofline
time of a step is those bytes over the copy bandwidth measured in this same script;
the fraction reached is roofline time / measured step time (forward pass only, and
the whole engine step including scheduling, input preparation and sampling).
Large batches on a CPU cross the ridge point and become compute-bound, so the script
also measures matmul FLOP/s and prints the full roofline bound,
max(bytes / bandwidth, FLOPs / matmul peak), and the fraction of it reached.

    python benchmarks/bench_decode_roofline.py
    python benchmarks/bench_decode_roofline.py --model small-150m --batch 1 --batch 32
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch


def decode_bytes(cfg, dtype_bytes: int, context_lens: list[int]) -> int:
    """Bytes one decode step reads: weights (embedding rows excluded) + KV of each sequence."""
    weights = cfg.num_parameters - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    return (weights + kv_per_token * sum(context_lens)) * dtype_bytes


def decode_flops(cfg, context_lens: list[int]) -> int:
    """FLOPs of one decode step: 2 per weight per sequence (embedding lookup aside) + attention."""
    weights = cfg.num_parameters - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1)
    attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    return 2 * weights * len(context_lens) + attn * sum(context_lens)


def measure(loaded, batch: int, prompt_len: int, steps: int) -> dict:
    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
    from bottleneck_map.embedded_engine.core.sequence import SamplingParams

    rng = random.Random(batch)
    engine = LLMEngine(
        loaded,
        EngineConfig(
            max_num_seqs=max(batch, 1),
            max_num_batched_tokens=max(512, batch),
            max_model_len=prompt_len + steps + 64,
            num_kv_blocks=batch * (-(-(prompt_len + steps + 64) // 16)) + 8,
            device="cpu",
        ),
    )
    for i in range(batch):
        prompt = [rng.randrange(3, loaded.config.vocab_size) for _ in range(prompt_len)]
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=steps + 8, ignore_eos=True))
    while (
        any(s.in_prefill for s in engine.scheduler.waiting)
        or any(s.in_prefill for s in engine.scheduler.running)
        or engine.scheduler.waiting
    ):
        engine.step()
    for _ in range(3):  # warm-up decode steps
        engine.step()
    fwd, whole, ctx = [], [], []
    for _ in range(steps):
        before = engine.stats.forward_ns
        ctx.append([s.num_tokens for s in engine.scheduler.running])
        t0 = time.perf_counter_ns()
        engine.step()
        whole.append(time.perf_counter_ns() - t0)
        fwd.append(engine.stats.forward_ns - before)
    dtype_bytes = torch.empty((), dtype=engine.dtype).element_size()
    nbytes = statistics.mean(decode_bytes(loaded.config, dtype_bytes, c) for c in ctx)
    flops = statistics.mean(decode_flops(loaded.config, c) for c in ctx)
    return {
        "batch": batch,
        "bytes": nbytes,
        "flops": flops,
        "forward_s": statistics.median(fwd) / 1e9,
        "step_s": statistics.median(whole) / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, action="append", help="decode batch sizes (default 1 and 32)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bottleneck_map.embedded_engine.model.loader import load_model
    from bottleneck_map.embedded_engine.model.peaks import copy_bandwidth, matmul_flops

    loaded = load_model(args.model, device="cpu", dtype="float32")
    bw = copy_bandwidth(torch.device("cpu"), 1.0)
    peak = matmul_flops(torch.device("cpu"), torch.float32, 1.0)
    print(
        f"model {args.model} ({loaded.config.num_parameters / 1e6:.1f} M params, float32), {args.threads} threads, "
        f"context {args.prompt_len} tokens; measured copy bandwidth {bw / 1e9:.2f} GB/s, matmul {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'batch':>5} {'MB/step':>8} {'GFLOP/step':>10} {'bw roof ms':>10} {'full roof ms':>12} {'forward ms':>10} "
        f"{'step ms':>8} {'tok/s':>7} {'fwd % bw roof':>13} {'step % bw roof':>14} {'step % full roof':>16}"
    )
    for batch in args.batch or [1, 32]:
        r = measure(loaded, batch, args.prompt_len, args.steps)
        bw_roof = r["bytes"] / bw
        full_roof = max(bw_roof, r["flops"] / peak)
        print(
            f"{batch:>5} {r['bytes'] / 1e6:>8.1f} {r['flops'] / 1e9:>10.2f} {bw_roof * 1e3:>10.2f} "
            f"{full_roof * 1e3:>12.2f} {r['forward_s'] * 1e3:>10.2f} {r['step_s'] * 1e3:>8.2f} "
            f"{batch / r['step_s']:>7.1f} {100 * bw_roof / r['forward_s']:>12.1f}% {100 * bw_roof / r['step_s']:>13.1f}% "
            f"{100 * full_roof / r['step_s']:>15.1f}%"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
