"""Analyzer scale benchmark: analysis time and peak memory versus just reading the bundle's Parquet.

Generates synthetic bundles (N requests with their steps, written with pyarrow in the layout
and encoding the engine's bundles have: every column the engine fills, jittered times; see
``--calibrate``), then, each in a fresh subprocess so peak RSS is per measurement:

* baseline: ``read_bundle(path).table(...)`` for requests, steps and samples (reading the Parquet);
* ours: ``analyze(path)`` (which includes the same read).

Prints wall and CPU time (user+sys: less sensitive to other load on a shared machine), peak RSS
(the process's own ``VmHWM``: total, and the interpreter with its imports, ``base``, to subtract),
bundle size on disk, how much larger the tables are in memory as Arrow (``arrow/disk``: the
bundle's compression ratio) and the ratios the analyzer issue sets: analysis <= 2x read time,
peak memory <= 3x bundle size on disk (``ana/disk`` total, ``net/disk`` less the interpreter),
linear from 100k to 1M. Read and analysis runs alternate; the fastest of ``--repeat`` runs of
each (by CPU time) is kept; imports happen before either clock starts. Bundles are generated
in a subprocess. ``--phases`` adds where the analysis of the largest size spends CPU and memory.
``--calibrate BUNDLE`` compares the synthetic bundle's columns, byte for byte per row on disk,
with those of a bundle the engine wrote.

    python benchmarks/bench_analyzer_scale.py --sizes 100000 300000 1000000
    python benchmarks/bench_analyzer_scale.py --calibrate BUNDLE
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
KV_BLOCKS = 16_384
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


def _lognormal(rng: np.random.Generator, median_ns: float, sigma: float, size: int) -> np.ndarray:
    return (median_ns * rng.lognormal(0.0, sigma, size)).astype(np.int64)


def generate(path: Path, n: int, seed: int = 0) -> None:
    """A bundle of ``n`` requests served by SLOTS slots of continuous batching (vectorised).

    Laid out as the engine writes it: every column the engine fills (the three per-token
    lists ``scheduled_ns``, ``token_ns`` and ``delivered_ns``, the empty preemption lists,
    the counters), step times that vary with the batch and jitter, tokens stamped per step,
    each chunk delivered to the client after its own delay, arrivals and queueing that
    differ per request. How well it compresses is compared with an engine bundle in
    docs/performance.md.
    """
    from bottleneck_map.bundle import BundleWriter, _dictionary_columns, new_meta
    from bottleneck_map.schema import REQUESTS, SAMPLES, STEPS

    rng = np.random.default_rng(seed)
    out_tok = rng.integers(8, 57, n).astype(np.int64)  # mean 32 output tokens
    prompt = rng.integers(64, 513, n).astype(np.int32)
    cached = np.where(rng.random(n) < 0.3, (prompt // 2) // 16 * 16, 0).astype(np.int32)  # prefix-cache hits
    slot = np.arange(n) % SLOTS
    # Each slot serves its requests back to back: a request occupies steps [s, s + out).
    order = np.lexsort((np.arange(n), slot))
    start_step = np.empty(n, np.int64)
    csum = np.cumsum(out_tok[order])
    first_of_slot = np.r_[True, slot[order][1:] != slot[order][:-1]]
    base = np.maximum.accumulate(np.where(first_of_slot, csum - out_tok[order], 0))
    start_step[order] = csum - out_tok[order] - base
    n_steps = int((start_step + out_tok).max())
    # (request, step) rows: request j in steps start_step[j] .. start_step[j] + out_tok[j] - 1.
    rep = np.repeat(np.arange(n), out_tok)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(out_tok) - out_tok, out_tok)
    step_of = start_step[rep] + within
    counts = np.bincount(step_of, minlength=n_steps)
    pre_rows = within == 0
    pre_tok = np.bincount(step_of, weights=np.where(pre_rows, prompt[rep] - cached[rep], 0), minlength=n_steps)
    pre_seqs = np.bincount(step_of, weights=pre_rows.astype(float), minlength=n_steps).astype(np.int32)
    # Step phases: the forward pass grows with the batch and its prefill tokens; every phase jitters.
    schedule = _lognormal(rng, 250_000, 0.3, n_steps)
    prepare = _lognormal(rng, 700_000, 0.3, n_steps)
    forward = ((5_000_000 + 40_000 * counts + 2_000 * pre_tok) * rng.lognormal(0.0, 0.08, n_steps)).astype(np.int64)
    sample = _lognormal(rng, 500_000, 0.3, n_steps)
    post = _lognormal(rng, 250_000, 0.3, n_steps)
    busy = schedule + prepare + forward + sample + post
    gap = _lognormal(rng, 100_000, 0.4, n_steps)
    t0 = 10**12
    step_start = t0 + np.r_[0, np.cumsum(busy + gap)[:-1]]
    step_end = step_start + busy
    stamp = step_end - post  # tokens are stamped once per step, before post-processing
    sched = step_start[start_step]
    tok_offsets = np.r_[0, np.cumsum(out_tok)]
    token_ns = stamp[step_of]
    scheduled_ns = step_start[step_of]
    # Each chunk reaches the client after its own delay; deliveries stay in order.
    first_tok = np.repeat(token_ns[tok_offsets[:-1]], out_tok)
    own = rep.astype(np.int64) << 40  # keeps the running maximum inside each request
    delay = _lognormal(rng, 400_000, 0.6, len(token_ns))
    delivered = np.maximum.accumulate(token_ns - first_tok + delay + own) - own + first_tok
    queue = rng.exponential(20_000_000, n).astype(np.int64)
    tok_time = (100_000 + 2_000 * prompt) * rng.lognormal(0.0, 0.2, n)
    queued = sched - queue
    tok_end = queued - _lognormal(rng, 30_000, 0.3, n)
    tok_start = tok_end - tok_time.astype(np.int64)
    arrival = tok_start - _lognormal(rng, 60_000, 0.3, n)
    last = tok_offsets[1:] - 1
    fin = token_ns[last] + _lognormal(rng, 50_000, 0.3, n)
    ids = np.char.add("req-", np.char.zfill(np.arange(n).astype(str), 7)).astype(object)
    by_step = np.argsort(step_of, kind="stable")
    rows_req = rep[by_step]
    rows_within = within[by_step]
    step_offsets = np.r_[0, np.cumsum(counts)]
    is_pf = rows_within == 0
    qlen = np.where(is_pf, prompt[rows_req] - cached[rows_req], 1).astype(np.int32)
    clen = (prompt[rows_req] + rows_within + 1).astype(np.int32)
    kv_used = np.bincount(step_of[by_step], weights=(clen + 15) // 16, minlength=n_steps).astype(np.int32)
    arrivals = np.sort(arrival)
    scheds = np.sort(sched)
    waiting = (np.searchsorted(arrivals, step_start, "right") - np.searchsorted(scheds, step_start, "right")).astype(
        np.int32
    )
    empty = _list(np.zeros(n + 1, np.int64), pa.array([], pa.int64()))
    zeros32, zeros64 = np.zeros(n, np.int32), np.zeros(n, np.int64)

    classes = np.array(["chat", "rag", "agentic"], dtype=object)[rng.integers(0, 3, n)]
    requests = pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "instance": pa.array(np.full(n, "engine-0", dtype=object), pa.string()),
            "workload_class": pa.array(classes, pa.string()),
            "finish_reason": pa.array(np.full(n, "length", dtype=object), pa.string()),
            "prompt_tokens": pa.array(prompt),
            "output_tokens": pa.array(out_tok.astype(np.int32)),
            "max_tokens": pa.array(out_tok.astype(np.int32)),
            "cached_prompt_tokens": pa.array(cached),
            "recomputed_tokens": pa.array(zeros32),
            "swapped_bytes": pa.array(zeros64),
            "arrival_ns": pa.array(arrival),
            "tokenize_start_ns": pa.array(tok_start),
            "tokenize_end_ns": pa.array(tok_end),
            "queued_ns": pa.array(queued),
            "first_scheduled_ns": pa.array(sched),
            "first_token_ns": pa.array(token_ns[tok_offsets[:-1]]),
            "finished_ns": pa.array(fin),
            "first_byte_ns": pa.array(delivered[tok_offsets[:-1]]),
            "last_byte_ns": pa.array(delivered[last]),
            "scheduled_ns": _list(tok_offsets, pa.array(scheduled_ns)),
            "preempted_ns": empty,
            "resumed_ns": empty,
            "token_ns": _list(tok_offsets, pa.array(token_ns)),
            "delivered_ns": _list(tok_offsets, pa.array(delivered)),
        }
    )
    steps = pa.table(
        {
            "step_id": pa.array(np.arange(1, n_steps + 1, dtype=np.int64)),
            "instance": pa.array(np.full(n_steps, "engine-0", dtype=object), pa.string()),
            "start_ns": pa.array(step_start),
            "end_ns": pa.array(step_end),
            "schedule_ns": pa.array(schedule),
            "prepare_ns": pa.array(prepare),
            "forward_ns": pa.array(forward),
            "sample_ns": pa.array(sample),
            "postprocess_ns": pa.array(post),
            "num_prefill_tokens": pa.array(pre_tok.astype(np.int32)),
            "num_prefill_seqs": pa.array(pre_seqs),
            "num_decode_seqs": pa.array((counts - pre_seqs).astype(np.int32)),
            "num_running": pa.array(counts.astype(np.int32)),
            "num_waiting": pa.array(waiting),
            "num_swapped": pa.array(np.zeros(n_steps, np.int32)),
            "num_preempted": pa.array(np.zeros(n_steps, np.int32)),
            "kv_blocks_used": pa.array(kv_used),
            "kv_blocks_free": pa.array((KV_BLOCKS - kv_used).astype(np.int32)),
            "swap_out_bytes": pa.array(np.zeros(n_steps, np.int64)),
            "swap_in_bytes": pa.array(np.zeros(n_steps, np.int64)),
            "request_ids": _list(step_offsets, pa.array(ids[rows_req], pa.string())),
            "query_lens": _list(step_offsets, pa.array(qlen)),
            "context_lens": _list(step_offsets, pa.array(clen)),
            "is_prefill": _list(step_offsets, pa.array(is_pf)),
        }
    )
    ts = np.arange(t0, int(step_end[-1]), 100_000_000, dtype=np.int64)
    m = len(ts)
    ts += rng.integers(0, 300_000, m)  # the sampler's wake-up jitter
    util = np.clip(rng.normal(0.9, 0.05, m), 0, 1)
    power = rng.normal(520.0, 40.0, m)
    samples = pa.table(
        {
            "ts_ns": pa.array(ts),
            "source": pa.array(np.full(m, "nvml", dtype=object), pa.string()),
            "device": pa.array(np.full(m, "0", dtype=object), pa.string()),
            "gpu_util_ratio": pa.array(util),
            "power_w": pa.array(power),
            "sm_clock_hz": pa.array(np.full(m, 1.98e9)),
            "sm_clock_max_hz": pa.array(np.full(m, 1.98e9)),
            "clock_event_reasons": pa.array(np.zeros(m, np.int64)),
            "energy_j": pa.array(np.cumsum(power * 0.1)),
        }
    )
    meta = new_meta(
        "bench-analyzer-scale",
        model=MODEL,
        engine={
            "max_num_seqs": SLOTS,
            "max_num_batched_tokens": 8192,
            "num_kv_blocks": KV_BLOCKS,
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
        # Segments of SEGMENT_ROWS rows, as BundleWriter flushes them (its flush_rows default),
        # with its encoding (only text dictionary-encoded, zstd).
        for seq, start in enumerate(range(0, max(full.num_rows, 1), SEGMENT_ROWS), 1):
            pq.write_table(
                full.slice(start, SEGMENT_ROWS),
                path / name / f"part-bench0000000-{seq:06d}.parquet",
                compression="zstd",
                use_dictionary=_dictionary_columns(name),
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


def calibrate(real: Path, n: int) -> None:
    """How the synthetic bundle compares with an engine bundle: per table, in memory / on disk,
    and the compressed bytes per row of every column, each table written as one segment with
    the writer's encoding (so segment sizes do not differ between the two)."""
    import io

    from bottleneck_map.bundle import _dictionary_columns, read_bundle

    with tempfile.TemporaryDirectory(prefix="bmap-calibrate-") as tmp:
        synth = Path(tmp) / "synthetic"
        generate(synth, n)
        for name in ("requests", "steps"):
            sizes = {}
            for label, path in (("engine", real), ("synthetic", synth)):
                table = read_bundle(path).table(name)
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd", use_dictionary=_dictionary_columns(name))
                buf.seek(0)
                md = pq.ParquetFile(buf).metadata
                cols: dict[str, int] = {}
                for g in range(md.num_row_groups):
                    for c in range(md.num_columns):
                        col = md.row_group(g).column(c)
                        cols[col.path_in_schema] = cols.get(col.path_in_schema, 0) + col.total_compressed_size
                rows = max(table.num_rows, 1)
                sizes[label] = {k: v / rows for k, v in cols.items()}
                print(
                    f"{name} {label}: {table.num_rows:,} rows, {buf.getbuffer().nbytes / rows:.0f} bytes/row on disk, "
                    f"in memory / on disk {table.nbytes / buf.getbuffer().nbytes:.2f}"
                )
            print(f"  {'column':34s} {'engine B/row':>12s} {'synthetic B/row':>15s}")
            for k in sorted(sizes["engine"], key=lambda k: -sizes["engine"][k]):
                if sizes["engine"][k] >= 0.5 or sizes["synthetic"].get(k, 0) >= 0.5:
                    print(f"  {k:34s} {sizes['engine'][k]:12.1f} {sizes['synthetic'].get(k, 0):15.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest is kept")
    ap.add_argument("--keep", type=Path, default=None, help="write bundles here instead of a temp dir")
    ap.add_argument("--chunk-rows", type=int, default=0, help="analyze(chunk_rows=...); 0: the default")
    ap.add_argument("--phases", action="store_true", help="also print where the analysis of the largest size goes")
    ap.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="compare the synthetic bundle's columns with an engine bundle's (per row, on disk) and exit",
    )
    args = ap.parse_args()
    if args.calibrate is not None:
        calibrate(args.calibrate, 20_000)
        return
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
