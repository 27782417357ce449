"""Host source over psutil: CPU per core, load, memory and swap, network per
interface, disk I/O per device, and one watched process.

CPU utilisation is measured between consecutive calls (psutil keeps the
previous reading). Host CPU and the watched process's CPU are read every tick; load, memory,
swap, network and disk counters, and the process's threads, RSS and context
switches once a second (``slow_interval_s``), carried over in between and
listed in ``stale``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from bottleneck_map.agent.sample import DiskCounters, HostSample, NetCounters, ProcSample, Sample

log = logging.getLogger("bottleneck_map.agent")

SLOW_INTERVAL_S = 1.0
# read once per SLOW_INTERVAL_S: they change slowly and cost more than the per-core CPU read
SLOW_HOST_FIELDS = frozenset(
    {
        "load1",
        "load5",
        "load15",
        "host_mem_used_bytes",
        "host_mem_available_bytes",
        "host_mem_total_bytes",
        "host_swap_used_bytes",
        "host_swap_total_bytes",
        "net",
        "disk",
    }
)
SLOW_PROC_FIELDS = frozenset({"num_threads", "rss_bytes", "ctx_switches_voluntary", "ctx_switches_involuntary"})


def _busy_total(t: Any) -> tuple[float, float]:
    """Busy and total CPU seconds of one core (guest time is already counted in user time on Linux)."""
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def cpu_busy_ratios(before: list[Any], after: list[Any]) -> list[float]:
    """Per-core busy fraction between two ``psutil.cpu_times(percpu=True)`` readings.

    Kept here rather than ``psutil.cpu_percent`` so that several samplers in one
    process do not reset each other's baseline (psutil keeps one, module-wide)."""
    out = []
    for b, a in zip(before, after, strict=False):
        busy_b, total_b = _busy_total(b)
        busy_a, total_a = _busy_total(a)
        dt = total_a - total_b
        out.append(min(1.0, max(0.0, (busy_a - busy_b) / dt)) if dt > 0 else 0.0)
    return out


class HostSource:
    """Samples the host and, when ``watch_pid`` is given, that process."""

    name = "host"

    def __init__(
        self,
        watch_pid: int | None = None,
        *,
        slow_interval_s: float = SLOW_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch_pid = watch_pid
        self.slow_interval_s = slow_interval_s
        self._clock = clock
        self._proc: psutil.Process | None = None
        self._proc_gone = False
        self._last_cpu: list[Any] = []
        self._slow: HostSample | None = None
        self._proc_slow: tuple[float, float, Any] | None = None
        self._proc_slow_due = 0.0
        self._slow_due = 0.0

    def start(self) -> bool:
        self._last_cpu = psutil.cpu_times(percpu=True)  # the per-core baseline
        if self.watch_pid is not None:
            try:
                self._proc = psutil.Process(self.watch_pid)
                self._proc.cpu_percent()
            except psutil.Error as exc:
                log.warning("watched pid %s is not available (%s)", self.watch_pid, exc)
                self._proc_gone = True
        return True

    def close(self) -> None:
        self._proc = None

    def collect(self, sample: Sample) -> None:
        """Fill ``sample.host`` and ``sample.proc``."""
        sample.host = self.sample_host()
        sample.proc = self.sample_proc()

    def sample_host(self) -> HostSample:
        """CPU every call; load, memory, swap, network and disk every ``slow_interval_s``
        (carried over in between and listed in ``stale``)."""
        h = HostSample()
        now_cpu = psutil.cpu_times(percpu=True)
        per_core = cpu_busy_ratios(self._last_cpu, now_cpu) if self._last_cpu else []
        self._last_cpu = now_cpu
        if per_core:
            h.cpu_util_per_core = per_core
            h.cpu_util_ratio = sum(h.cpu_util_per_core) / len(h.cpu_util_per_core)
            h.cpu_util_max_core_ratio = max(h.cpu_util_per_core)
        now = self._clock()
        if self._slow is None or now >= self._slow_due:
            self._slow_due = now + self.slow_interval_s
            self._slow = self._sample_slow()
            stale: frozenset[str] = frozenset()
        else:
            stale = SLOW_HOST_FIELDS
        for name in SLOW_HOST_FIELDS:
            setattr(h, name, getattr(self._slow, name))
        h.stale = stale
        return h

    @staticmethod
    def _sample_slow() -> HostSample:
        h = HostSample()
        try:
            h.load1, h.load5, h.load15 = os.getloadavg()
        except OSError:
            pass
        vm = psutil.virtual_memory()
        h.host_mem_total_bytes = float(vm.total)
        h.host_mem_available_bytes = float(vm.available)
        h.host_mem_used_bytes = float(vm.total - vm.available)
        sw = psutil.swap_memory()
        h.host_swap_total_bytes = float(sw.total)
        h.host_swap_used_bytes = float(sw.used)
        nics = psutil.net_io_counters(pernic=True) or {}
        h.net = {
            name: NetCounters(float(c.bytes_recv), float(c.bytes_sent), float(c.packets_recv), float(c.packets_sent))
            for name, c in nics.items()
        }
        try:
            disks = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        except (OSError, RuntimeError):
            disks = {}
        h.disk = {name: DiskCounters(float(c.read_bytes), float(c.write_bytes)) for name, c in disks.items()}
        return h

    def sample_proc(self) -> ProcSample | None:
        """CPU every call; threads, RSS and context switches every ``slow_interval_s``."""
        if self._proc is None:
            return None
        p = self._proc
        slow = self._proc_slow is None or self._clock() >= self._proc_slow_due
        try:
            if slow:
                with p.oneshot():
                    cpu = p.cpu_percent()
                    ctx = p.num_ctx_switches()
                    self._proc_slow = (float(p.num_threads()), float(p.memory_info().rss), ctx)
                self._proc_slow_due = self._clock() + self.slow_interval_s
            else:
                cpu = p.cpu_percent()
        except psutil.Error as exc:
            if not self._proc_gone:
                log.warning("watched pid %s is gone (%s); process metrics stop", self.watch_pid, exc)
            self._proc_gone = True
            self._proc = None
            return None
        threads, rss, ctx = self._proc_slow
        return ProcSample(
            pid=p.pid,
            cpu_ratio=cpu / 100.0,
            num_threads=threads,
            rss_bytes=rss,
            ctx_switches_voluntary=float(ctx.voluntary),
            ctx_switches_involuntary=float(ctx.involuntary),
            stale=frozenset() if slow else SLOW_PROC_FIELDS,
        )
