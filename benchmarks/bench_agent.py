"""Node agent cost: CPU at 10 Hz, and /metrics scrape latency next to prometheus-node-exporter.

1. CPU: ``bottleneck-map agent`` runs as its own process at ``--interval 0.1`` with host
   sampling, a watched pid, a bundle being written and the pynvml test double faking 8 GPUs
   (GPM on). Its CPU time over a window (after a warm-up) divided by the window is the share of
   one core it costs. Target: at most 1 %. Without a GPU this measures our Python and psutil
   work plus the fake's; the real driver calls cost extra and are measured in docs/gpu-validation.md.
2. Scrape latency: the same agent and Debian's ``prometheus-node-exporter`` (default collectors)
   on loopback ports, scraped alternately by one client, fresh connection per scrape like
   Prometheus after a restart; p50/p99 of each and the ratio agent / node-exporter.

    python benchmarks/bench_agent.py [--seconds 30] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FAKE_DIR = ROOT / "tests" / "agent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(port: int, out: Path, gpus: int, watch_pid: int) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(FAKE_DIR)!r}); import fake_pynvml as f; "
        f"f.install(f.FakeNvml(f.h100s({gpus}))); from bottleneck_map.cli import main; "
        "sys.argv = ['bottleneck-map', 'agent', *sys.argv[1:]]; main()"
    )
    args = ["--port", str(port), "--interval", "0.1", "--out", str(out), "--watch-pid", str(watch_pid)]
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def scrape_ms(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1e3, len(body)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per target")
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    agent_port = free_port()
    agent = start_agent(agent_port, tmp / "bundle", args.gpus, os.getpid())
    ne = None
    try:
        agent_url = f"http://127.0.0.1:{agent_port}/metrics"
        wait_http(agent_url)
        time.sleep(args.warmup)
        p = psutil.Process(agent.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = p.cpu_times(), time.monotonic()
        cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0)
        print(
            f"agent CPU at 10 Hz, host + watched pid + bundle + {args.gpus} fake GPUs (GPM on): "
            f"{cpu * 100:.2f} % of one core over {t1 - t0:.0f} s (target <= 1 %)"
        )

        exporter = shutil.which("prometheus-node-exporter")
        if exporter is None:
            print("prometheus-node-exporter not installed: scrape comparison skipped")
            return
        ne_port = free_port()
        ne = subprocess.Popen(
            [exporter, f"--web.listen-address=127.0.0.1:{ne_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ne_url = f"http://127.0.0.1:{ne_port}/metrics"
        wait_http(ne_url)
        for _ in range(10):  # warm both
            scrape_ms(agent_url)
            scrape_ms(ne_url)
        ours, theirs, sizes = [], [], {}
        for _ in range(args.scrapes):
            ms, n = scrape_ms(agent_url)
            ours.append(ms)
            sizes["agent"] = n
            ms, n = scrape_ms(ne_url)
            theirs.append(ms)
            sizes["node-exporter"] = n
        a50, a99, n50, n99 = pct(ours, 50), pct(ours, 99), pct(theirs, 50), pct(theirs, 99)
        print(f"scrape latency over {args.scrapes} scrapes each (loopback, new connection per scrape):")
        print(f"  bmap agent ({args.gpus} fake GPUs, {sizes['agent']} bytes): p50 {a50:.2f} ms  p99 {a99:.2f} ms")
        print(f"  prometheus-node-exporter ({sizes['node-exporter']} bytes): p50 {n50:.2f} ms  p99 {n99:.2f} ms")
        print(f"  ratio agent / node-exporter: p50 {a50 / n50:.2f}x  p99 {a99 / n99:.2f}x")
    finally:
        for proc in (agent, ne):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
