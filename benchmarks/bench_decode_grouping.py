"""Paged decode attention: decodes grouped by context length against one group padded to the longest.

Runs the model's forward pass alone on one all-decode step (every sequence computes one token),
with context lengths drawn uniformly from a range, once with the engine's grouping and once
with every decode padded to the step's longest context (``MAX_DECODE_GROUPS = 1``), alternating
the two so both see the same machine load. Prints the CPU time per step (minimum and median)
and the ratio.

    python benchmarks/bench_decode_grouping.py
    python benchmarks/bench_decode_grouping.py --batch 64 --min-context 16 --max-context 64
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def build_step(loaded, batch: int, lo: int, hi: int, block_size: int, seed: int):
    from bottleneck_map.embedded_engine.model.attention import AttentionMetadata
    from bottleneck_map.embedded_engine.model.kv_cache import allocate_kv_cache

    rng = random.Random(seed)
    ctx = [rng.randint(lo, hi) for _ in range(batch)]
    nbs = [-(-c // block_size) for c in ctx]
    blocks = list(range(1, sum(nbs) + 1))
    rng.shuffle(blocks)  # scattered, as a block allocator leaves them after a while
    tables, used = [], 0
    for nb in nbs:
        tables.append(blocks[used : used + nb] + [0] * (max(nbs) - nb))
        used += nb
    kv = allocate_kv_cache(loaded.config, sum(nbs) + 1, block_size, loaded.device, loaded.dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(
            [t[(c - 1) // block_size] * block_size + (c - 1) % block_size for t, c in zip(tables, ctx, strict=True)]
        ),
        query_lens=[1] * batch,
        context_lens=ctx,
        block_tables=torch.tensor(tables, dtype=torch.int32),
        block_size=block_size,
    )
    ids = torch.randint(3, loaded.config.vocab_size, (batch,))
    positions = torch.tensor(ctx) - 1
    return lambda: loaded.model(ids, positions, meta, kv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-context", type=int, default=32)
    ap.add_argument("--max-context", type=int, default=768)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bottleneck_map.embedded_engine.model import attention
    from bottleneck_map.embedded_engine.model.loader import load_model

    loaded = load_model(args.model, device="cpu")
    step = build_step(loaded, args.batch, args.min_context, args.max_context, args.block_size, seed=0)
    grouped_max = attention.MAX_DECODE_GROUPS
    times: dict[str, list[float]] = {"grouped": [], "padded": []}
    for _ in range(args.rounds):
        for name, groups in (("grouped", grouped_max), ("padded", 1)):
            attention.MAX_DECODE_GROUPS = groups
            step()  # warm-up for this variant
            t0 = time.process_time()
            step()
            times[name].append(time.process_time() - t0)
    attention.MAX_DECODE_GROUPS = grouped_max
    print(
        f"model {args.model}, {args.threads} thread(s), {args.batch} decodes, "
        f"contexts {args.min_context}-{args.max_context}, block size {args.block_size}"
    )
    for name, ts in times.items():
        print(f"{name:8s} CPU ms/step: min {1e3 * min(ts):7.1f}  median {1e3 * statistics.median(ts):7.1f}")
    ratio = statistics.median(times["padded"]) / statistics.median(times["grouped"])
    print(f"speed-up of grouping (median padded / median grouped): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
