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
3. ``--baseline DIR`` (a tree exported from an earlier commit: ``git archive REV | tar -x -C DIR``):
   in each round the baseline's agent runs *at the same time* as ours, both with their own test
   double, so both see the same machine load; prints both and the ratio.
4. ``--stages``: instead of the above, the agent's parts run inside this process as the CLI
   wires them (sampler, bundle writer, /metrics server) and each stage of the sampler thread is
   timed with ``time.thread_time()``; per-thread CPU from ``/proc/self/task``. With
   ``--baseline DIR`` the baseline's stages are measured at the same time in a second process.
5. ``--hot``: the tick's parts (host source, NVML source with GPM on every other tick, the rows
   to columns hand-over) called back to back, best of 40 repetitions: warm-cache CPU, which
   filters out most of a busy VM's noise. With ``--baseline DIR`` the two trees run in
   alternating fresh processes, ``--rounds`` times.
6. ``--cold``: single operations 100 ms after their last run against back to back, and the NVML
   source's per-GPU reading in tick order inside a running sampler: where a tick's cost comes from.

    python benchmarks/bench_agent.py [--seconds 30] [--rounds 1] [--scrapes 300] [--baseline DIR]
    python benchmarks/bench_agent.py --stages [--seconds 30] [--baseline DIR]
    python benchmarks/bench_agent.py --hot [--rounds 4] [--baseline DIR]
    python benchmarks/bench_agent.py --cold [--cold-reps 40]
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


def baseline_import_root(tree: Path, tmp: Path) -> Path:
    """A folder that makes ``import bottleneck_map...`` load ``tree``'s code (put it on PYTHONPATH
    and start from a directory without a ``bottleneck_map`` folder): the package's own files
    plus its components, linked as the editable install maps them."""
    pkg = tmp / "baseline-import" / "bottleneck_map"
    pkg.mkdir(parents=True)
    for entry in (tree / "bottleneck_map").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for component in ("agent", "analyzer", "dashboard", "embedded_engine"):
        if (tree / component).is_dir() and not (pkg / component).exists():
            (pkg / component).symlink_to(tree / component)
    return pkg.parent


def start_agent(
    port: int,
    out: Path,
    gpus: int,
    watch_pid: int,
    double: str = "scripted",
    tree: Path = ROOT,
    import_root: Path | None = None,
) -> subprocess.Popen:
    """``bottleneck-map agent`` of ``tree`` (ours, or a baseline with its ``import_root``)."""
    install = f"f.FakeNvml(f.h100s({gpus}))"
    if double == "minimal":
        install = f"__import__('bench_agent').minimal_nvml({install})"
        install = f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}) or " + install
    fake_dir = tree / "tests" / "agent"
    code = (
        f"import sys; sys.path.insert(0, {str(fake_dir)!r}); import fake_pynvml as f; "
        f"m = {install}; sys.modules['pynvml'] = getattr(m, 'module', m); "
        "from bottleneck_map.cli import main; "
        "sys.argv = ['bottleneck-map', 'agent', *sys.argv[1:]]; main()"
    )
    args = ["--port", str(port), "--interval", "0.1", "--out", str(out), "--watch-pid", str(watch_pid)]
    env, cwd = None, None
    if import_root is not None:
        env = dict(os.environ, PYTHONPATH=str(import_root))
        cwd = str(import_root.parent)
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL, env=env, cwd=cwd)


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


def measure_side_by_side(tmp: Path, args: argparse.Namespace, baseline: Path, root: Path, r: int) -> dict:
    """Share of one core of our agent and the baseline's, measured over the same window."""
    agents = {}
    try:
        for name, tree, import_root in (("ours", ROOT, None), ("baseline", baseline, root)):
            port = free_port()
            agents[name] = (
                start_agent(port, tmp / f"{name}-{r}", args.gpus, os.getpid(), "scripted", tree, import_root),
                port,
            )
        for _, port in agents.values():
            wait_http(f"http://127.0.0.1:{port}/metrics")
        time.sleep(args.warmup)
        procs = {name: psutil.Process(a.pid) for name, (a, _) in agents.items()}
        c0, t0 = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}, time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}, time.monotonic()
        return {n: (c1[n] - c0[n]) / (t1 - t0) for n in procs}
    finally:
        for a, _ in agents.values():
            a.terminate()
            try:
                a.wait(20)
            except subprocess.TimeoutExpired:
                a.kill()


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name."""
    import threading

    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            v = f.read()
        v = v[v.rindex(b")") + 2 :].split()
        out[names.get(tid, tid)] = (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    return out


def stages(args: argparse.Namespace) -> None:
    """The agent's parts in this process, wired as ``bottleneck-map agent --out`` wires them,
    each stage of the sampler thread timed with thread_time()."""
    import importlib.util
    import inspect

    # the test double of the tree whose agent is imported (ours, or a baseline on PYTHONPATH)
    agent_dir = Path(importlib.util.find_spec("bottleneck_map.agent").origin).resolve().parent
    sys.path.insert(0, str(agent_dir.parent / "tests" / "agent"))
    import fake_pynvml

    sys.modules["pynvml"] = fake_pynvml.FakeNvml(fake_pynvml.h100s(args.gpus)).module
    from prometheus_client import CollectorRegistry

    from bottleneck_map.agent import cli
    from bottleneck_map.agent.collector import AgentCollector
    from bottleneck_map.agent.sampler import Sampler
    from bottleneck_map.agent.server import MetricsServer
    from bottleneck_map.bundle import BundleWriter, new_meta

    spent: dict[str, int] = {}

    def timed(obj: object, method: str, stage: str) -> None:
        fn = getattr(obj, method)

        def wrapper(*a: object, **kw: object) -> object:
            t = time.thread_time_ns()
            try:
                return fn(*a, **kw)
            finally:
                spent[stage] = spent.get(stage, 0) + time.thread_time_ns() - t

        setattr(obj, method, wrapper)

    # as `bottleneck-map agent --out` wires them (older trees: the writer's own flusher thread)
    on_sampler = "flush_writes" in inspect.signature(Sampler).parameters
    kw = {"write_every_s": cli.FLUSH_INTERVAL_S, "flush_writes": True} if on_sampler else {}
    sampler = Sampler(interval_s=0.1, watch_pid=os.getppid(), instance="bench", **kw)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(sampler, "prometheus", hostname="bench"))
    server = MetricsServer(registry, "127.0.0.1", 0)
    sampler.open()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-stages-"))
    timer = cli.WRITER_TIMER_S if on_sampler else cli.FLUSH_INTERVAL_S
    writer = BundleWriter(tmp / "b", new_meta("bench"), tables=("samples",), flush_interval_s=timer)
    sampler.writer = writer
    for src in sampler.sources:
        timed(src, "collect", f"source {src.name}")
    timed(sampler, "_write_unwritten", "bundle: columns + hand-over" + (" + segment" if on_sampler else ""))
    timed(writer, "flush", "bundle: Parquet segment" + (" (inside the line above)" if on_sampler else ", own thread"))
    server.start()
    sampler.start()
    try:
        time.sleep(args.warmup)
        spent.clear()
        th0, p0, t0, k0 = thread_cpu_s(), time.process_time(), time.monotonic(), sampler.stats.ticks
        time.sleep(args.seconds)
        th1, p1, t1, k1 = thread_cpu_s(), time.process_time(), time.monotonic(), sampler.stats.ticks
        done = dict(spent)
    finally:
        sampler.stop()
        server.stop()
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    dt, ticks = t1 - t0, max(1, k1 - k0)
    print(
        f"in-process ({agent_dir.parent}), {args.gpus} GPUs from the test double, {dt:.0f} s, {ticks} ticks, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"  process in total: {100 * (p1 - p0) / dt:.2f} % of one core")
    for name in sorted(th1):
        if name in th0 and th1[name] > th0[name]:
            print(f"  thread {name}: {100 * (th1[name] - th0[name]) / dt:.2f} %")
    for name, ns in sorted(done.items()):
        print(f"  {name}: {100 * ns / 1e9 / dt:.3f} % ({ns / 1e3 / ticks:.0f} us per tick)")


def hot(args: argparse.Namespace) -> None:
    """Back-to-back CPU of one tick's parts (warm caches), the best of many repetitions: what
    the code costs with the machine's noise filtered out, for comparing two trees on a busy VM
    (at 10 Hz the same parts cost several times more, from cold caches)."""
    import importlib.util

    agent_dir = Path(importlib.util.find_spec("bottleneck_map.agent").origin).resolve().parent
    sys.path.insert(0, str(agent_dir.parent / "tests" / "agent"))
    import fake_pynvml

    sys.modules["pynvml"] = fake_pynvml.FakeNvml(fake_pynvml.h100s(args.gpus)).module
    from bottleneck_map.agent.sample import Sample, to_columns
    from bottleneck_map.agent.sampler import Sampler

    sampler = Sampler(interval_s=0.1, watch_pid=os.getppid())
    sampler.open()
    host, nvml = sampler.sources
    readers = [d.gpm for d in nvml.devices if d.gpm is not None]
    for r in readers:  # GPM on every other call, as at 10 Hz with 0.2 s windows: spacing by call count
        r.min_spacing_ns = r.max_wait_ns = 0
    calls = [0]

    def nvml_tick() -> None:
        calls[0] += 1
        for r in readers:
            r.min_spacing_ns = 0 if calls[0] % 2 else 1 << 62
        nvml.sample(0)

    def best_us(fn, n: int = 100, reps: int = 40) -> float:  # noqa: ANN001
        best = float("inf")
        for _ in range(reps):
            t = time.thread_time_ns()
            for _ in range(n):
                fn()
            best = min(best, (time.thread_time_ns() - t) / n / 1e3)
        return best

    for _ in range(20):
        sampler.sample_once()
    batch = [sampler.sample_once() for _ in range(100)]
    parts = {
        "host source": best_us(lambda: host.collect(Sample(0))),
        f"NVML source, {args.gpus} GPUs, GPM every other tick": best_us(nvml_tick),
        "rows to columns (per tick of a 100-tick batch)": best_us(lambda: to_columns(batch, "bench"), 3, 20) / 100,
    }
    sampler.stop()
    print(f"hot, back to back ({agent_dir.parent}), best of 40 repetitions, load {os.getloadavg()[0]:.2f}:")
    for name, us in parts.items():
        print(f"  {name}: {us:.1f} us per tick")
    print(f"  sum: {sum(parts.values()):.1f} us per tick")


def alone(tmp: Path, args: argparse.Namespace) -> None:
    """Our agent with the test double and with the minimal stand-in, in alternating windows."""
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


def cold(args: argparse.Namespace) -> None:
    """What an operation costs 100 ms after the last time it ran (as in a 10 Hz tick) against
    back to back: thread CPU, medians of ``--cold-reps``. On a VM most of a tick's cost is this
    difference, paid once per distinct code path per tick."""
    import statistics

    sys.path.insert(0, str(FAKE_DIR))
    import fake_pynvml

    sys.modules["pynvml"] = fake_pynvml.FakeNvml(fake_pynvml.h100s(args.gpus)).module
    from bottleneck_map.agent.host import per_core_busy_total
    from bottleneck_map.agent.sampler import Sampler

    fd = os.open("/proc/loadavg", os.O_RDONLY)
    stat = os.open("/proc/stat", os.O_RDONLY)
    proc_stat = os.pread(stat, 16384, 0)
    ops = {
        "two thread_time_ns() calls": lambda: None,
        "pread of /proc/loadavg": lambda: os.pread(fd, 4096, 0),
        "pread of /proc/stat": lambda: os.pread(stat, 16384, 0),
        "parse the cpu lines of /proc/stat": lambda: per_core_busy_total(proc_stat),
    }

    def cpu_us(fn) -> float:  # noqa: ANN001
        t = time.thread_time_ns()
        fn()
        return (time.thread_time_ns() - t) / 1e3

    print(f"cold (100 ms after the last call) against back to back, medians of {args.cold_reps}:")
    for name, fn in ops.items():
        spaced = []
        for _ in range(args.cold_reps):
            time.sleep(0.1)
            spaced.append(cpu_us(fn))
        warm = [cpu_us(fn) for _ in range(args.cold_reps)]
        print(f"  {name}: {statistics.median(spaced):.1f} us cold, {statistics.median(warm):.1f} us warm")
    os.close(fd)
    os.close(stat)
    # the NVML source's per-GPU reading inside a running sampler: the first GPU of a tick runs cold
    sampler = Sampler(interval_s=0.1, watch_pid=os.getppid())
    nvml = sampler.sources[1]
    per_gpu: dict[int, list[float]] = {}
    sample_device = nvml._sample_device

    def timed(dev, now):  # noqa: ANN001, ANN202
        t = time.thread_time_ns()
        try:
            return sample_device(dev, now)
        finally:
            per_gpu.setdefault(dev.index, []).append((time.thread_time_ns() - t) / 1e3)

    nvml._sample_device = timed
    sampler.start()
    time.sleep(2 + args.cold_reps * 0.1)
    sampler.stop()
    medians = [statistics.median(v[10:]) for _, v in sorted(per_gpu.items())]
    print("  NVML source at 10 Hz, per GPU in tick order: " + ", ".join(f"{m:.0f}" for m in medians) + " us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per target")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="CPU windows per pynvml stand-in, alternating")
    ap.add_argument("--baseline", type=Path, help="an exported earlier tree, run side by side with ours")
    ap.add_argument("--stages", action="store_true", help="in-process per-stage CPU accounting only")
    ap.add_argument("--hot", action="store_true", help="back-to-back CPU of the tick's parts (warm caches) only")
    ap.add_argument("--hot-once", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help="operations 100 ms apart against back to back only")
    ap.add_argument("--cold-reps", type=int, default=40)
    ap.add_argument("--side-by-side-only", action="store_true", help="with --baseline: skip the runs of ours alone")
    args = ap.parse_args()
    if args.cold:
        cold(args)
        return
    if args.hot_once:
        hot(args)
        return
    if args.hot:  # each tree in a fresh process of its own, alternating, --rounds times
        me = [sys.executable, str(Path(__file__).resolve()), "--hot-once", "--gpus", str(args.gpus)]
        tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
        root = baseline_import_root(args.baseline.resolve(), tmp) if args.baseline is not None else None
        for _ in range(args.rounds):
            subprocess.run(me, check=True)
            if root is not None:
                subprocess.run(me, env=dict(os.environ, PYTHONPATH=str(root)), cwd=str(tmp), check=True)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if args.stages:
        baseline = None
        if args.baseline is not None:  # the baseline's stages in a second process, at the same time
            tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
            root = baseline_import_root(args.baseline.resolve(), tmp)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stages", "--seconds", str(args.seconds)]
            cmd += ["--warmup", str(args.warmup), "--gpus", str(args.gpus)]
            env = dict(os.environ, PYTHONPATH=str(root))
            baseline = subprocess.Popen(cmd, env=env, cwd=str(tmp), stdout=subprocess.PIPE, text=True)
        stages(args)
        if baseline is not None:
            print(baseline.communicate()[0], end="")
            shutil.rmtree(tmp, ignore_errors=True)
        return

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    if not args.side_by_side_only:
        alone(tmp, args)
    if args.baseline is not None:
        root = baseline_import_root(args.baseline.resolve(), tmp)
        pairs = []
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            pairs.append(measure_side_by_side(tmp, args, args.baseline.resolve(), root, r))
            print(
                f"  side by side, round {r + 1}: ours {pairs[-1]['ours'] * 100:.2f} %, "
                f"baseline {pairs[-1]['baseline'] * 100:.2f} % (load {load:.2f} -> {os.getloadavg()[0]:.2f})"
            )
        ours = statistics.median(p["ours"] for p in pairs)
        base = statistics.median(p["baseline"] for p in pairs)
        print(f"ours {ours * 100:.2f} % vs baseline {base * 100:.2f} % of one core (medians): {ours / base:.2f}x")
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
