"""Analyzer scale benchmark: analysis time and peak memory versus just reading the bundle's Parquet.

Generates synthetic bundles (N requests with their steps, written with pyarrow in the bundle
layout), then, each in a fresh subprocess so peak RSS is per measurement:

* baseline: ``read_bundle(path).table(...)`` for requests, steps and samples (reading the Parquet);
* ours: ``analyze(path)`` (which includes the same read).

Prints wall and CPU time (user+sys: less sensitive to other load on a shared machine), peak RSS
(the process's own ``VmHWM``: total, and the interpreter with its imports, ``base``, to subtract),
bundle size on disk, how much larger the tables are in memory as Arrow (``arrow/disk``: the
bundle's compression ratio) and the ratios the analyzer issue sets: analysis <= 2x read time,
peak memory <= 3x bundle size on disk (``ana/disk`` total, ``net/disk`` less the interpreter),
linear from 100k to 1M. Read and analysis runs alternate; the fastest of ``--repeat`` runs of
each (by CPU time) is kept; imports happen before either clock starts. Bundles are generated in a subprocess. ``--phases`` adds where the
analysis of the largest size spends CPU and memory.

    python benchmarks/bench_analyzer_scale.py --sizes 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SLOTS = 64  # concurrent sequences (batch slots)
STEP_NS = 10_000_000  # 10 ms per engine step
SEGMENT_ROWS = 20_000  # rows per Parquet segment, BundleWriter's default flush_rows
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
    "dtype": "bfloat16",
    "dtype_bytes": 2,
}


def _list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def generate(path: Path, n: int, seed: int = 0) -> None:
    """A bundle of ``n`` requests served by SLOTS slots of continuous batching (vectorised)."""
    from bottleneck_map.bundle import BundleWriter, new_meta
    from bottleneck_map.schema import REQUESTS, SAMPLES, STEPS

    rng = np.random.default_rng(seed)
    out_tok = rng.integers(8, 57, n).astype(np.int64)  # mean 32 output tokens
    prompt = rng.integers(64, 513, n).astype(np.int32)
    slot = np.arange(n) % SLOTS
    # Each slot serves its requests back to back: a request occupies steps [s, s + out).
    order = np.lexsort((np.arange(n), slot))
    start_step = np.empty(n, np.int64)
    csum = np.cumsum(out_tok[order])
    first_of_slot = np.r_[True, slot[order][1:] != slot[order][:-1]]
    base = np.maximum.accumulate(np.where(first_of_slot, csum - out_tok[order], 0))
    start_step[order] = csum - out_tok[order] - base
    n_steps = int((start_step + out_tok).max())
    t0 = 10**12
    step_start = t0 + np.arange(n_steps, dtype=np.int64) * STEP_NS
    step_end = step_start + STEP_NS - 1_000_000
    sched = step_start[start_step]
    queue = rng.integers(0, 50_000_000, n)
    arrival = sched - queue - 2_000_000
    fin = step_end[start_step + out_tok - 1]
    ids = np.char.add("r", np.char.zfill(np.arange(n).astype(str), 7)).astype(object)
    # (request, step) rows: request j in steps start_step[j] .. start_step[j] + out_tok[j] - 1.
    rep = np.repeat(np.arange(n), out_tok)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(out_tok) - out_tok, out_tok)
    step_of = start_step[rep] + within
    tok_offsets = np.r_[0, np.cumsum(out_tok)]
    token_ns = step_end[step_of] - 500_000
    by_step = np.argsort(step_of, kind="stable")
    rows_req = rep[by_step]
    rows_within = within[by_step]
    counts = np.bincount(step_of, minlength=n_steps)
    step_offsets = np.r_[0, np.cumsum(counts)]
    is_pf = rows_within == 0
    qlen = np.where(is_pf, prompt[rows_req], 1).astype(np.int32)
    clen = (prompt[rows_req] + rows_within + 1).astype(np.int32)

    classes = np.array(["chat", "rag", "agentic"], dtype=object)[rng.integers(0, 3, n)]
    requests = pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "workload_class": pa.array(classes, pa.string()),
            "finish_reason": pa.array(np.full(n, "length", dtype=object), pa.string()),
            "prompt_tokens": pa.array(prompt),
            "output_tokens": pa.array(out_tok.astype(np.int32)),
            "cached_prompt_tokens": pa.array(np.zeros(n, np.int32)),
            "arrival_ns": pa.array(arrival),
            "tokenize_start_ns": pa.array(arrival + 100_000),
            "tokenize_end_ns": pa.array(arrival + 1_100_000),
            "queued_ns": pa.array(arrival + 1_100_000),
            "first_scheduled_ns": pa.array(sched),
            "first_token_ns": pa.array(token_ns[tok_offsets[:-1]]),
            "finished_ns": pa.array(fin),
            "first_byte_ns": pa.array(token_ns[tok_offsets[:-1]] + 200_000),
            "last_byte_ns": pa.array(fin + 300_000),
            "token_ns": _list(tok_offsets, pa.array(token_ns)),
        }
    )
    pre_tok = np.bincount(step_of, weights=np.where(within == 0, prompt[rep], 0), minlength=n_steps).astype(np.int32)
    pre_seqs = np.bincount(step_of, weights=(within == 0).astype(float), minlength=n_steps).astype(np.int32)
    steps = pa.table(
        {
            "step_id": pa.array(np.arange(n_steps, dtype=np.int64)),
            "start_ns": pa.array(step_start),
            "end_ns": pa.array(step_end),
            "schedule_ns": pa.array(np.full(n_steps, 200_000, np.int64)),
            "prepare_ns": pa.array(np.full(n_steps, 300_000, np.int64)),
            "forward_ns": pa.array(np.full(n_steps, 8_000_000, np.int64)),
            "sample_ns": pa.array(np.full(n_steps, 300_000, np.int64)),
            "postprocess_ns": pa.array(np.full(n_steps, 200_000, np.int64)),
            "num_prefill_tokens": pa.array(pre_tok),
            "num_prefill_seqs": pa.array(pre_seqs),
            "num_decode_seqs": pa.array((counts - pre_seqs).astype(np.int32)),
            "num_running": pa.array(counts.astype(np.int32)),
            "num_waiting": pa.array(np.zeros(n_steps, np.int32)),
            "kv_blocks_used": pa.array((counts * 20).astype(np.int32)),
            "kv_blocks_free": pa.array((4096 - counts * 20).astype(np.int32)),
            "request_ids": _list(step_offsets, pa.array(ids[rows_req], pa.string())),
            "query_lens": _list(step_offsets, pa.array(qlen)),
            "context_lens": _list(step_offsets, pa.array(clen)),
            "is_prefill": _list(step_offsets, pa.array(is_pf)),
        }
    )
    ts = np.arange(t0, int(step_end[-1]), 100_000_000, dtype=np.int64)
    samples = pa.table(
        {
            "ts_ns": pa.array(ts),
            "source": pa.array(np.full(len(ts), "nvml", dtype=object), pa.string()),
            "device": pa.array(np.full(len(ts), "0", dtype=object), pa.string()),
            "gpu_util_ratio": pa.array(np.full(len(ts), 0.9)),
            "sm_clock_hz": pa.array(np.full(len(ts), 1.98e9)),
            "sm_clock_max_hz": pa.array(np.full(len(ts), 1.98e9)),
            "clock_event_reasons": pa.array(np.zeros(len(ts), np.int64)),
            "energy_j": pa.array((ts - t0) / 1e9 * 400.0),
        }
    )
    meta = new_meta(
        "bench-analyzer-scale",
        model=MODEL,
        engine={
            "max_num_seqs": SLOTS,
            "max_num_batched_tokens": 8192,
            "num_kv_blocks": 4096,
            "block_size": 16,
            "chunked_prefill": True,
        },
        device={"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        capabilities={"steps": True, "samples": True, "streaming": True},
        workload={"kind": "synthetic-scale", "num_requests": n},
    )
    w = BundleWriter(path, meta)
    w.close()
    for name, table, schema in (
        ("requests", requests, REQUESTS),
        ("steps", steps, STEPS),
        ("samples", samples, SAMPLES),
    ):
        cols = [
            table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
        ]
        full = pa.Table.from_arrays(cols, schema=schema)
        # Segments of SEGMENT_ROWS rows, as BundleWriter flushes them (its flush_rows default).
        for seq, start in enumerate(range(0, max(full.num_rows, 1), SEGMENT_ROWS), 1):
            pq.write_table(
                full.slice(start, SEGMENT_ROWS),
                path / name / f"part-bench0000000-{seq:06d}.parquet",
                compression="zstd",
            )


_CHILD = r"""
import json, resource, sys, time
import bottleneck_map.analyzer, bottleneck_map.bundle  # imports are not part of either measurement
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
mode, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
base = status("VmRSS:")  # the interpreter with its imports
t, c = time.perf_counter(), cpu()
if mode == "read":
    b = bottleneck_map.bundle.read_bundle(path)
    tables = {n: b.table(n) for n in ("requests", "steps", "samples")}
    rows = {n: t.num_rows for n, t in tables.items()}
    arrow_bytes = sum(t.nbytes for t in tables.values())
    top = None
else:
    m = bottleneck_map.analyzer.analyze(path, **({"chunk_rows": chunk} if chunk else {}))
    rows, top, arrow_bytes = None, m.top.cls, None
wall, cpu_s = time.perf_counter() - t, cpu() - c
# VmHWM is this process's own peak (ru_maxrss can carry over the parent's peak across fork + exec).
print(json.dumps({"wall_s": wall, "cpu_s": cpu_s, "peak_rss_bytes": status("VmHWM:"), "base_rss_bytes": base,
                  "rows": rows, "top": top, "arrow_bytes": arrow_bytes}))
"""

_GENERATE = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import bench_analyzer_scale
bench_analyzer_scale.generate(Path(sys.argv[1]), int(sys.argv[2]))
"""

# Where the analysis spends CPU and memory: the main functions of analyze_full wrapped, each
# reporting its CPU time, the resident size when it starts, its peak (sampled every 2 ms) and
# when it returns. The instrumentation itself costs a little CPU.
_PHASES = r"""
import functools, sys, threading, time
from bottleneck_map.analyzer import api, attribution, latency, roofline, stages, steprows, windows
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
peak, rows, depth, stop = [0.0], [], [0], []
def sample():
    while not stop:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
def wrap(mod, name):
    f = getattr(mod, name)
    @functools.wraps(f)
    def g(*a, **k):
        depth[0] += 1
        r0, c0 = rss(), time.process_time()
        peak[0] = r0
        try:
            return f(*a, **k)
        finally:
            depth[0] -= 1
            rows.append((depth[0], f"{mod.__name__.rsplit('.', 1)[-1]}.{name}", time.process_time() - c0, r0, peak[0], rss()))
    setattr(mod, name, g)
for mod, name in [(api, "load"), (stages, "lifecycle"), (steprows, "reduce_steps"), (roofline, "step_roofline"),
                  (attribution, "step_breakdown"), (stages, "request_stages"), (latency, "request_metrics"),
                  (api, "_token_pass"), (steprows, "own_step_sums"), (attribution, "attribute"), (windows, "window_timeline"),
                  (windows, "window_verdicts"), (latency, "latency_summaries"), (api, "_signals"), (api, "_stage_stats"),
                  (api, "_worst")]:
    wrap(mod, name)
base = rss()
c0 = time.process_time()
api.analyze(sys.argv[1])
stop.append(1)
print(f"  phases of analyze ({time.process_time() - c0:.2f} s CPU with the instrumentation; interpreter + imports {base:.0f} MiB):")
print(f"  {'phase':34s} {'CPU s':>6s} {'RSS MiB at start':>16s} {'peak':>6s} {'at end':>6s}")
for d, n, c, r0, pk, r1 in rows:
    print(f"  {'  ' * d + n:34s} {c:6.3f} {r0:16.0f} {pk:6.0f} {r1:6.0f}")
"""


def _run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest is kept")
    ap.add_argument("--keep", type=Path, default=None, help="write bundles here instead of a temp dir")
    ap.add_argument("--chunk-rows", type=int, default=0, help="analyze(chunk_rows=...); 0: the default")
    ap.add_argument("--phases", action="store_true", help="also print where the analysis of the largest size goes")
    args = ap.parse_args()
    print(
        f"{'requests':>9} {'steps':>9} {'disk MiB':>8} {'arrow/disk':>10} {'read s':>7} {'analyze s':>9} {'x wall':>6} "
        f"{'read cpu':>8} {'ana cpu':>8} {'x cpu':>6} {'read MiB':>8} {'ana MiB':>8} {'base MiB':>8} "
        f"{'ana/disk':>8} {'net/disk':>8} {'cpu s/100k':>10}"
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="bmap-scale-"))
    here = str(Path(__file__).resolve().parent)
    try:
        for n in args.sizes:
            path = root / f"scale-{n}"
            if not (path / "meta.json").exists():
                t = time.perf_counter()
                subprocess.run([sys.executable, "-c", _GENERATE, str(path), str(n), here], check=True)
                print(f"  (generated {n:,} requests in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
            size = du(path)
            chunk = str(args.chunk_rows)
            # Read and analysis alternate, so both see the same load on a shared machine.
            runs = [
                (_run([_CHILD, "read", str(path), chunk]), _run([_CHILD, "analyze", str(path), chunk]))
                for _ in range(args.repeat)
            ]
            read = min((r for r, _ in runs), key=lambda r: r["cpu_s"])
            ana = min((a for _, a in runs), key=lambda r: r["cpu_s"])
            peak, base = ana["peak_rss_bytes"], ana["base_rss_bytes"]
            print(
                f"{n:>9,} {read['rows']['steps']:>9,} {size / 2**20:>8.1f} {read['arrow_bytes'] / size:>10.1f} "
                f"{read['wall_s']:>7.2f} {ana['wall_s']:>9.2f} {ana['wall_s'] / read['wall_s']:>6.2f} "
                f"{read['cpu_s']:>8.2f} {ana['cpu_s']:>8.2f} {ana['cpu_s'] / read['cpu_s']:>6.2f} "
                f"{read['peak_rss_bytes'] / 2**20:>8.0f} {peak / 2**20:>8.0f} {base / 2**20:>8.0f} "
                f"{peak / size:>8.1f} {(peak - base) / size:>8.1f} {ana['cpu_s'] / n * 1e5:>10.2f}",
                flush=True,
            )
        if args.phases:
            out = subprocess.run(
                [sys.executable, "-c", _PHASES, str(root / f"scale-{args.sizes[-1]}")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            print(out, end="")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
