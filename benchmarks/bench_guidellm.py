"""GuideLLM against `bottleneck-map serve`: its TTFT/ITL next to our analyzer's for the same run.

GuideLLM runs unchanged (its own OpenAI HTTP backend, synthetic data, the built-in model's
tokenizer from a local directory). Our analyzer reads the bundle `serve` wrote during the
run. GuideLLM measures on the client (request headers sent -> first token chunk read), the
analyzer on the server (arrival -> first byte written, ``first_byte_ns``, for streamed
requests), so the script also prints, per request (matched by response id), the two parts
of the client's TTFT outside the server's: client send -> server arrival, and first byte
written -> client read; and, inside the server's TTFT, first token sampled -> first byte
written.

    pip install guidellm==0.8.1        # or: pip install --target DIR ... and GUIDELLM_PATH=DIR
    python benchmarks/bench_guidellm.py --streams 8 --requests 64 --rounds 3

Each round starts a fresh `serve` (the engine in its own process unless --engine-thread)
on a free port, with serve's own default model (the built-in `default` preset) unless
--model says otherwise (`--model tiny`: TTFTs of 10-50 ms on a CPU, where the client's own
milliseconds weigh more). Prints one table per round, then the median ratio (analyzer / GuideLLM)
over the rounds, with the 1-minute load average before and after each round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_serve import wait_ready

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "embedded_engine" / "model" / "presets"
METRICS = ("TTFT mean", "TTFT p50", "ITL/TPOT mean", "ITL/TPOT p50")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_round(args, work: Path) -> dict:
    from bottleneck_map.analyzer.api import analyze
    from bottleneck_map.bundle import read_bundle

    bundle, report = work / "bundle", work / "guidellm.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", args.model, "--device", "cpu",
           "--port", str(port), "--bundle", str(bundle), "--max-num-seqs", str(args.max_num_seqs)]  # fmt: skip
    if args.engine_thread:
        cmd.append("--engine-thread")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    load_before = os.getloadavg()[0]
    serve = subprocess.Popen(cmd)
    try:
        wait_ready(url, serve)
        env = dict(os.environ)
        if os.environ.get("GUIDELLM_PATH"):
            env["PYTHONPATH"] = os.environ["GUIDELLM_PATH"] + os.pathsep + env.get("PYTHONPATH", "")
        gcmd = [
            sys.executable, "-m", "guidellm", "run",
            "--backend", f"kind=openai_http,target={url},model={args.model}",
            "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER_DIR}",
            "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}",
            "--profile", f"kind=concurrent,streams={args.streams}",
            "--constraint", f"kind=max_requests,count={args.requests}",
            "--output", f"kind=json,path={report}",
            "--disable-console",
        ]  # fmt: skip
        print("$", " ".join(gcmd[1:]), flush=True)
        run = subprocess.run(gcmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if run.returncode != 0:
            sys.exit(f"guidellm failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-4000:]}")
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    load_after = os.getloadavg()[0]

    bench = json.loads(report.read_text())["benchmarks"][0]
    gm = bench["metrics"]
    ours = next(s for s in analyze(bundle).latency if s.workload_class == "all")
    # GuideLLM's per-request "ITL" is (last token - first token) / (tokens - 1): what vLLM (and our
    # analyzer) call TPOT. Its "TPOT" includes the first token, so it has no counterpart here.
    g = {k: gm[k]["successful"] for k in ("time_to_first_token_ms", "inter_token_latency_ms")}
    pairs = {
        "TTFT mean": (g["time_to_first_token_ms"]["mean"], ours.ttft.mean * 1e3),
        "TTFT p50": (g["time_to_first_token_ms"]["median"], ours.ttft.p50 * 1e3),
        "ITL/TPOT mean": (g["inter_token_latency_ms"]["mean"], ours.tpot.mean * 1e3),
        "ITL/TPOT p50": (g["inter_token_latency_ms"]["median"], ours.tpot.p50 * 1e3),
    }
    b = read_bundle(bundle)
    clock = b.meta["clock"]
    off = clock["origin_unix_ns"] - clock["origin_monotonic_ns"]
    req = b.requests.set_index("request_id")
    parts = {"send -> arrival": [], "first byte written -> client": [], "(inside) first token -> first byte": []}
    for r in bench["requests"]["successful"]:
        t, s = r["info"]["timings"], req.loc[r["response_id"]]
        parts["send -> arrival"].append((s.arrival_ns + off) / 1e9 - t["request_start"])
        parts["first byte written -> client"].append(t["first_token_iteration"] - (s.first_byte_ns + off) / 1e9)
        parts["(inside) first token -> first byte"].append((s.first_byte_ns - s.first_token_ns) / 1e9)
    return {
        "pairs": pairs,
        "parts": {k: (np.mean(v) * 1e3, np.median(v) * 1e3) for k, v in parts.items()},
        "n": len(bench["requests"]["successful"]),
        "errors": len(bench["requests"]["errored"]),
        "load": (load_before, load_after),
        "ttft_mean": ours.ttft.mean * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="default", help="serve --model (default: serve's own default, the built-in model)"
    )
    ap.add_argument("--streams", type=int, default=8, help="GuideLLM concurrent streams")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="fresh server and GuideLLM run per round")
    ap.add_argument("--engine-thread", action="store_true", help="serve --engine-thread (the engine in a thread)")
    ap.add_argument("--threads", type=int, default=None, help="serve --threads (engine torch threads on CPU)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one GuideLLM run may take")
    args = ap.parse_args()

    results = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-guidellm-") as work:
            res = one_round(args, Path(work))
        results.append(res)
        lb, la = res["load"]
        print(f"\nround {i + 1}/{args.rounds}: {res['n']} requests, {res['errors']} errors, load {lb:.2f} -> {la:.2f}")
        print(f"{'metric':<16}{'GuideLLM':>10}{'analyzer':>10}{'ratio':>8}")
        for name, (gv, av) in res["pairs"].items():
            print(f"{name:<16}{gv:>10.2f}{av:>10.2f}{av / gv:>8.3f}")
        print("parts of the client's TTFT outside the server's (mean / p50 ms), and one inside it:")
        for name, (mean, p50) in res["parts"].items():
            print(f"  {name:<36}{mean:>8.2f}{p50:>8.2f}")
        extra = res["parts"]["send -> arrival"][0] + res["parts"]["first byte written -> client"][0]
        print(
            f"  analyzer TTFT mean + the two outside = {res['ttft_mean'] + extra:.2f} ms"
            f" vs GuideLLM {res['pairs']['TTFT mean'][0]:.2f} ms"
        )
    if args.rounds > 1:
        print(f"\nmedian over {args.rounds} rounds (analyzer / GuideLLM), each round's ratio in brackets:")
        for name in METRICS:
            ratios = [r["pairs"][name][1] / r["pairs"][name][0] for r in results]
            print(f"  {name:<16}{np.median(ratios):>8.3f}  [{' '.join(f'{x:.3f}' for x in ratios)}]")


if __name__ == "__main__":
    main()
