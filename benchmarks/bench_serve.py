"""What the HTTP layer costs: the same requests through `serve` (OpenAI API, SSE streaming,
N concurrent clients on loopback, the server in its own process) and straight into an in-process
engine (the same closed loop: at most N requests in flight, the next submitted when one
finishes). Same model, engine settings, prompts and output lengths. Rounds interleave; prints
each round, the best throughput and CPU seconds per 1,000 output tokens of both, and the ratios.

    python benchmarks/bench_serve.py --requests 128 --max-tokens 32 --clients 64 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx
import psutil


def wait_ready(url: str, serve: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    """Wait for ``serve``'s /health; fail early if its process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve is not None and serve.poll() is not None:
            raise RuntimeError(f"serve exited with code {serve.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serve did not come up at {url}")


def prompts(n: int) -> list[str]:
    return [f"request {i}: tell me about the number {i * 7919 % 1000}" for i in range(n)]


async def stream_all(url: str, texts: list[str], max_tokens: int, clients: int) -> int:
    sem = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(text: str) -> int:
            body = {"model": "tiny", "prompt": text, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            async with sem, client.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                used = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        doc = json.loads(line[6:])
                        if doc.get("usage"):
                            used = doc["usage"]["completion_tokens"]
                return used

        return sum(await asyncio.gather(*(one(t) for t in texts)))


def closed_loop(engine, texts: list[str], params, clients: int) -> int:
    """In-process baseline with the same closed loop as the HTTP clients: at most ``clients``
    requests in the engine, the next one submitted when one finishes."""
    pending, tokens, in_flight, done = list(reversed(texts)), 0, 0, 0
    while done < len(texts):
        while pending and in_flight < clients:
            engine.add_request(f"b{len(pending)}", pending.pop(), params)
            in_flight += 1
        for out in engine.step():
            tokens += len(out.new_token_ids)
            if out.finished:
                in_flight, done = in_flight - 1, done + 1
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each side is kept")
    ap.add_argument("--engine-thread", action="store_true", help="serve --engine-thread (the engine in a thread)")
    args = ap.parse_args()

    import torch

    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
    from bottleneck_map.embedded_engine.core.sequence import SamplingParams
    from bottleneck_map.embedded_engine.model.loader import load_model

    loaded = load_model(args.model, device="cpu", dtype="float32", seed=0)
    cfg = dict(device="cpu", max_num_seqs=args.max_num_seqs, num_kv_blocks=2048, max_model_len=512)
    texts = prompts(args.requests)

    engine = LLMEngine(loaded, EngineConfig(**cfg))
    engine.generate(texts[:4], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    port = args.port
    server = subprocess.Popen(
        [sys.executable, "-m", "bottleneck_map.cli", "serve", "--model", args.model, "--device", "cpu",
         "--port", str(port), "--max-num-seqs", str(args.max_num_seqs), "--num-kv-blocks", "2048",
         "--max-model-len", "512", "--threads", str(torch.get_num_threads())]  # the baseline's threads
        + (["--engine-thread"] if args.engine_thread else [])
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    base, serve = [], []  # (seconds, tokens) per round; rounds interleave so load drifts hit both alike
    try:
        wait_ready(url)
        asyncio.run(stream_all(url, texts[:4], 4, 4))  # warm-up
        root = psutil.Process(server.pid)
        procs = [root, *root.children(recursive=True)]  # the HTTP process and its engine process

        def server_cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs)

        for _ in range(args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            n = closed_loop(engine, texts, params, args.clients)
            base.append((time.perf_counter() - t0, n, time.process_time() - c0))
            t0, c0 = time.perf_counter(), server_cpu()
            n = asyncio.run(stream_all(url, texts, args.max_tokens, args.clients))
            serve.append((time.perf_counter() - t0, n, server_cpu() - c0))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    for k, (b, v) in enumerate(zip(base, serve, strict=True)):
        print(f"round {k}: in-process {b[0]:.2f} s wall {b[2]:.2f} s CPU; serve {v[0]:.2f} s wall {v[2]:.2f} s CPU")
    # CPU seconds per 1,000 output tokens: what each path costs, less sensitive than wall time to
    # other work on a shared machine. Serve's CPU is the server's processes (HTTP and engine), not the clients.
    b_cpu = min(c / n * 1000 for _, n, c in base)
    s_cpu = min(c / n * 1000 for _, n, c in serve)
    b_wall = max(n / w for w, n, _ in base)
    s_wall = max(n / w for w, n, _ in serve)
    print(f"in-process engine : best {b_wall:,.0f} tok/s, {b_cpu:.3f} CPU-s per 1k tokens")
    print(f"serve (HTTP, SSE) : best {s_wall:,.0f} tok/s, {s_cpu:.3f} CPU-s per 1k tokens ({args.clients} clients)")
    print(f"ratio serve / in-process: throughput {s_wall / b_wall:.3f}, CPU per token {s_cpu / b_cpu:.3f}")


if __name__ == "__main__":
    main()
