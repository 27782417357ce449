"""Node agent cost: CPU at 10 Hz, and /metrics scrape latency next to prometheus-node-exporter.

1. CPU: ``bottleneck-map agent`` runs as its own process at ``--interval 0.1`` with host
   sampling, a watched pid, a bundle being written and the pynvml test double faking 8 GPUs
   (GPM on). Its CPU time over a window (after a warm-up) divided by the window is the share of
   one core it costs. Target: at most 1 %. Without a GPU this measures our Python and psutil
   work plus the double's; the real driver calls cost extra and are measured in
   docs/gpu-validation.md. To separate the double's own cost, the same agent also runs (in
   alternating windows, ``--rounds`` times each) against a *minimal* stand-in: the per-tick
   library calls return the double's values without its bookkeeping (call counters, scripted
   failures, handle and sample checks), each still building a fresh result structure as
   pynvml does; the once-a-second and set-up calls go to the double unchanged. The agent runs
   exactly the same code in both; the difference between the two is the double's own cost.
2. Scrape latency: the same agent and Debian's ``prometheus-node-exporter`` (default collectors)
   on loopback ports, scraped alternately by one client, fresh connection per scrape like
   Prometheus after a restart; p50/p99 of each and the ratio agent / node-exporter.

    python benchmarks/bench_agent.py [--seconds 30] [--rounds 1] [--scrapes 300]
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


# the calls the agent makes on every tick for every GPU (the rest go to the double unchanged)
PER_TICK = (
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlGpmSampleGet",
    "nvmlGpmMetricsGet",
)


def minimal_nvml(fake):  # noqa: ANN001, ANN201 - the double's FakeNvml, a module
    """A pynvml stand-in whose per-tick calls cost as little as a Python call can: each
    returns what the double returned for the same arguments the first time (structures
    copied afresh from that result, GPM metrics copied into the request in one memmove)."""
    import ctypes
    import types

    mod = types.ModuleType("pynvml")
    mod.__dict__.update(vars(fake.module))
    memo: dict = {}

    def make(name: str):  # noqa: ANN202
        real = getattr(fake.module, name)

        if name == "nvmlGpmSampleGet":

            def sample_get(handle, buf):  # noqa: ANN001, ANN202
                if (id(handle), id(buf)) not in memo:
                    memo[(id(handle), id(buf))] = real(handle, buf)
                return buf

            return sample_get
        if name == "nvmlGpmMetricsGet":

            def metrics_get(req):  # noqa: ANN001, ANN202
                key = id(req)
                image = memo.get(key)
                if image is None:
                    real(req)
                    image = memo[key] = bytes(object.__getattribute__(req, "metrics"))
                ctypes.memmove(ctypes.addressof(object.__getattribute__(req, "metrics")), image, len(image))
                return req

            return metrics_get

        def call(handle, *args):  # noqa: ANN001, ANN202
            key = (name, id(handle), args)
            value = memo.get(key)
            if value is None:
                value = memo[key] = real(handle, *args)
            return type(value).from_buffer_copy(value) if isinstance(value, ctypes.Structure) else value

        return call

    for name in PER_TICK:
        setattr(mod, name, make(name))
    return mod


def start_agent(port: int, out: Path, gpus: int, watch_pid: int, double: str = "scripted") -> subprocess.Popen:
    install = f"f.FakeNvml(f.h100s({gpus}))"
    if double == "minimal":
        install = f"__import__('bench_agent').minimal_nvml({install})"
        install = f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}) or " + install
    code = (
        f"import sys; sys.path.insert(0, {str(FAKE_DIR)!r}); import fake_pynvml as f; "
        f"m = {install}; sys.modules['pynvml'] = getattr(m, 'module', m); "
        "from bottleneck_map.cli import main; "
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


def measure_cpu(out: Path, args: argparse.Namespace, double: str) -> float:
    """Share of one core the agent process uses over ``args.seconds``, after ``args.warmup``."""
    port = free_port()
    agent = start_agent(port, out, args.gpus, os.getpid(), double)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        time.sleep(args.warmup)
        p = psutil.Process(agent.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = p.cpu_times(), time.monotonic()
        return (c1.user - c0.user + c1.system - c0.system) / (t1 - t0)
    finally:
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per target")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="CPU windows per pynvml stand-in, alternating")
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    cpu: dict[str, list[float]] = {"scripted": [], "minimal": []}
    for r in range(args.rounds):
        for double in cpu:
            cpu[double].append(measure_cpu(tmp / f"{double}-{r}", args, double))
    for double, label in (("scripted", "the pynvml test double"), ("minimal", "a minimal pynvml stand-in")):
        runs = ", ".join(f"{c * 100:.2f}" for c in cpu[double])
        print(
            f"agent CPU at 10 Hz, host + watched pid + bundle + {args.gpus} GPUs from {label} (GPM on): "
            f"{statistics.median(cpu[double]) * 100:.2f} % of one core (median; runs {runs} %, {args.seconds:.0f} s each)"
        )
    double_cost = statistics.median(cpu["scripted"]) - statistics.median(cpu["minimal"])
    print(
        f"  the test double's own cost (difference): {double_cost * 100:.2f} % of one core; "
        f"the agent's own: {statistics.median(cpu['minimal']) * 100:.2f} % (target <= 1 %)"
    )
    print(f"load average {os.getloadavg()[0]:.2f} at the end of the CPU runs")
    agent_port = free_port()
    agent = start_agent(agent_port, tmp / "bundle", args.gpus, os.getpid())
    ne = None
    try:
        agent_url = f"http://127.0.0.1:{agent_port}/metrics"
        wait_http(agent_url)
        if args.scrapes <= 0:
            return

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
