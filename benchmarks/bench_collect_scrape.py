"""Cost of ``collect --scrape``: CPU share of one core while it reads a vLLM ``/metrics`` each second.

Each round runs two ``bottleneck-map collect --no-receive --scrape URL`` processes back to back:
one for ``--seconds`` and one for 0 s (start-up, one scrape, the bundle's close). The difference
of their CPU times (user + system, from the kernel's accounting of the exited child) divided by
``--seconds`` is what scraping costs per second of collection, start-up excluded. Target: under
2% of a core.

The target is a real vLLM when ``--url`` names one; otherwise a stand-in serves the page a
vLLM 0.32 served (``tests/bottleneck_map/ingest/data/vllm-0.32-metrics.txt``, 629 lines) with
its counters advancing on every request, from a thread of this process.

    python benchmarks/bench_collect_scrape.py [--seconds 60] [--rounds 3] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "tests" / "bottleneck_map" / "ingest" / "data" / "vllm-0.32-metrics.txt").read_text()


def stand_in() -> tuple[ThreadingHTTPServer, str]:
    """A /metrics server whose counters (``_total``/``_count``/``_sum`` samples) grow on every scrape."""
    lock = threading.Lock()
    state = {"n": 0}
    counter = re.compile(r"^(vllm:\S+?(?:_total|_count|_sum)(?:\{[^}]*\})?) (\S+)$", re.M)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            with lock:
                state["n"] += 1
                n = state["n"]
            body = counter.sub(lambda m: f"{m[1]} {float(m[2]) + 10 * n}", PAGE).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def collect_cpu(url: str, seconds: float, out: Path) -> tuple[float, int]:
    """CPU seconds of one collect process that scrapes ``url`` for ``seconds``, and its scrapes."""
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "collect", "--out", str(out), "--no-receive"]
    cmd += ["--scrape", url, "--duration", f"{seconds:g}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"collect exited {proc.returncode}: {err}")
    m = re.search(r"(\d+) scrapes", err)
    return usage.ru_utime + usage.ru_stime, int(m[1]) if m else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--url", help="a real vLLM's base URL (default: a stand-in serving a real page)")
    args = ap.parse_args()
    server = None
    url = args.url
    if url is None:
        server, url = stand_in()
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            long_cpu, scrapes = collect_cpu(url, args.seconds, Path(tmp) / f"long-{r}")
            short_cpu, _ = collect_cpu(url, 0, Path(tmp) / f"short-{r}")
            share = (long_cpu - short_cpu) / args.seconds
            shares.append(share)
            print(
                f"round {r + 1}: {args.seconds:g} s run {long_cpu:.2f} CPU s ({scrapes} scrapes), "
                f"0 s run {short_cpu:.2f} CPU s -> {100 * share:.2f} % of a core"
            )
    if server is not None:
        server.shutdown()
    print(f"collect --scrape: median {100 * statistics.median(shares):.2f} % of a core (target < 2 %)")


if __name__ == "__main__":
    main()
