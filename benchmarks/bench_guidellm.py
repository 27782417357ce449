"""GuideLLM against `bottleneck-map serve`: its TTFT/ITL next to our analyzer's for the same run.

GuideLLM runs unchanged (its own OpenAI HTTP backend, synthetic data, the built-in model's
tokenizer from a local directory). Our analyzer reads the bundle `serve` wrote during the
run. GuideLLM measures on the client, the analyzer on the server, so the script also
prints, per request (matched by response id), the parts of the client's TTFT that the
server cannot see: client send -> server arrival, and first token sampled -> client
received.

    pip install guidellm==0.8.1        # or: pip install --target DIR ... and GUIDELLM_PATH=DIR
    python benchmarks/bench_guidellm.py --streams 8 --requests 64

Prints a table and the ratios analyzer / GuideLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "embedded_engine" / "presets"


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serve did not come up at {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--streams", type=int, default=8, help="GuideLLM concurrent streams")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-guidellm-"))
    bundle, report = work / "bundle", work / "guidellm.json"
    url = f"http://127.0.0.1:{args.port}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", args.model, "--device", "cpu",
         "--port", str(args.port), "--bundle", str(bundle), "--max-num-seqs", str(args.max_num_seqs)],
    )  # fmt: skip
    try:
        wait_ready(url)
        env = dict(os.environ)
        if os.environ.get("GUIDELLM_PATH"):
            env["PYTHONPATH"] = os.environ["GUIDELLM_PATH"] + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [
            sys.executable, "-m", "guidellm", "run",
            "--backend", f"kind=openai_http,target={url},model={args.model}",
            "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER_DIR}",
            "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}",
            "--profile", f"kind=concurrent,streams={args.streams}",
            "--constraint", f"kind=max_requests,count={args.requests}",
            "--output", f"kind=json,path={report}",
            "--disable-console",
        ]  # fmt: skip
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, env=env)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)

    from bottleneck_map.analyzer.api import analyze
    from bottleneck_map.bundle import read_bundle

    bench = json.loads(report.read_text())["benchmarks"][0]
    gm = bench["metrics"]
    result = analyze(bundle)
    ours = next(s for s in result.latency if s.workload_class == "all")
    # GuideLLM's per-request "ITL" is (last token - first token) / (tokens - 1): what vLLM (and our
    # analyzer) call TPOT. Its "TPOT" includes the first token, so it has no counterpart here.
    g = {k: gm[k]["successful"] for k in ("time_to_first_token_ms", "inter_token_latency_ms")}
    rows = [
        ("TTFT mean (ms)", g["time_to_first_token_ms"]["mean"], ours.ttft.mean * 1e3),
        ("TTFT p50 (ms)", g["time_to_first_token_ms"]["median"], ours.ttft.p50 * 1e3),
        ("ITL/TPOT mean", g["inter_token_latency_ms"]["mean"], ours.tpot.mean * 1e3),
        ("ITL/TPOT p50", g["inter_token_latency_ms"]["median"], ours.tpot.p50 * 1e3),
    ]
    print(f"\n{'metric':<16}{'GuideLLM':>10}{'analyzer':>10}{'ratio':>8}")
    for name, g, a in rows:
        print(f"{name:<16}{g:>10.2f}{a:>10.2f}{a / g:>8.3f}")

    b = read_bundle(bundle)
    clock = b.meta["clock"]
    off = clock["origin_unix_ns"] - clock["origin_monotonic_ns"]
    req = b.requests.set_index("request_id")
    send_to_arrival, token_to_client = [], []
    for r in bench["requests"]["successful"]:
        t, s = r["info"]["timings"], req.loc[r["response_id"]]
        send_to_arrival.append((s.arrival_ns + off) / 1e9 - t["request_start"])
        token_to_client.append(t["first_token_iteration"] - (s.first_token_ns + off) / 1e9)
    a, c = np.mean(send_to_arrival) * 1e3, np.mean(token_to_client) * 1e3
    print(
        f"\nanalyzer pooled ITL mean {ours.itl.mean * 1e3:.2f} ms, p50 {ours.itl.p50 * 1e3:.2f} ms"
        f"\nclient-only parts of TTFT (mean): send -> server arrival {a:.2f} ms, "
        f"first token -> client {c:.2f} ms; analyzer TTFT + both = {ours.ttft.mean * 1e3 + a + c:.2f} ms "
        f"vs GuideLLM {rows[0][1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
