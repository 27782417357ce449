"""Host source: CPU per core, load, memory and swap, network per interface, disk
I/O per device, and one watched process.

The watched process's CPU is read every tick. The host's fields (per-core CPU,
load, memory, swap, network and disk counters) and the process's threads, RSS
and context switches are read once a second (``slow_interval_s``), carried over
in between and listed in ``stale``. Per-core CPU is measured between consecutive
reads (each source keeps its own previous reading): ``/proc/stat`` counts in
clock ticks of 10 ms, so a 100 ms window can only show a core at 0, 10, 20 ...
100 % busy; a one-second window resolves 1 %.

On Linux every read keeps its ``/proc`` file open and re-reads it with one
``pread`` (:class:`ProcStatFile`), parsing only the fields it uses:
``/proc/stat``, ``/proc/meminfo``, ``/proc/net/dev``, ``/proc/diskstats``,
``/proc/<pid>/stat`` and ``/proc/<pid>/status``. The watched process's CPU comes
from its CPU-time clock (:func:`process_cpu_clock`), one ``clock_gettime`` a tick.
The numbers are the ones psutil reads (the same files and fields); where
``/proc`` is not there, or a file cannot be parsed, psutil is used.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import psutil

from bottleneck_map.agent.sample import DiskCounters, HostSample, NetCounters, ProcSample, Sample

log = logging.getLogger("bottleneck_map.agent")

SLOW_INTERVAL_S = 1.0
# read once per SLOW_INTERVAL_S and carried over in between: every field of HostSample
SLOW_HOST_FIELDS = frozenset(
    {
        "cpu_util_ratio",
        "cpu_util_per_core",
        "cpu_util_max_core_ratio",
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
assert {f.name for f in fields(HostSample)} - {"stale"} == SLOW_HOST_FIELDS
SLOW_PROC_FIELDS = frozenset({"num_threads", "rss_bytes", "ctx_switches_voluntary", "ctx_switches_involuntary"})


PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SECTOR_SIZE = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size


def _busy_total(t: Any) -> tuple[float, float]:
    """Busy and total CPU seconds of one core (guest time is already counted in user time on Linux)."""
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


# How long after its baseline the first CPU reading comes (several of the kernel's CPU-time ticks).
FIRST_READING_AFTER_S = 0.05


def busy_ratios(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[float]:
    """Per-core busy fraction between two lists of per-core (busy, total) CPU times."""
    out = []
    for (busy_b, total_b), (busy_a, total_a) in zip(before, after, strict=False):
        dt = total_a - total_b
        out.append(min(1.0, max(0.0, (busy_a - busy_b) / dt)) if dt > 0 else 0.0)
    return out


def cpu_busy_ratios(before: list[Any], after: list[Any]) -> list[float]:
    """Per-core busy fraction between two ``psutil.cpu_times(percpu=True)`` readings.

    Kept here rather than ``psutil.cpu_percent`` so that several samplers in one
    process do not reset each other's baseline (psutil keeps one, module-wide)."""
    return busy_ratios([_busy_total(t) for t in before], [_busy_total(t) for t in after])


class ProcStatFile:
    """A ``/proc`` file kept open and re-read whole from offset 0 with one ``pread``
    (the kernel formats it afresh on every read at offset 0)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._size = 16384

    def read(self) -> bytes:
        if self._fd is None:
            raise OSError(f"{self.path} is closed")
        while True:
            data = os.pread(self._fd, self._size, 0)
            if len(data) < self._size:
                return data
            self._size *= 2  # did not fit: read again, whole, with a bigger buffer

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def per_core_busy_total(proc_stat: bytes) -> list[tuple[float, float]]:
    """Per-core (busy, total) jiffies from ``/proc/stat``: the ``cpuN`` lines that
    ``psutil.cpu_times(percpu=True)`` reads, with :func:`_busy_total`'s arithmetic
    (user .. steal is the total, guest time being inside user time; idle + iowait is idle)."""
    end = proc_stat.find(b"\nintr")  # the cpu lines come first; the long interrupt line is not needed
    out = []
    for line in (proc_stat if end < 0 else proc_stat[:end]).split(b"\n")[1:]:  # line 0: all CPUs
        if line.startswith(b"cpu"):
            v = line.split()
            total = float(sum(map(int, v[1:9])))  # user nice system idle iowait irq softirq steal
            out.append((total - int(v[4]) - int(v[5]), total))
    return out


def meminfo_bytes(meminfo: bytes) -> dict[bytes, int]:
    """``/proc/meminfo`` as {field name: bytes} (the file gives kB, as psutil multiplies)."""
    out = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(b":")
        value = rest.split()
        if value:
            out[name] = int(value[0]) * 1024
    return out


def proc_cpu_seconds(proc_pid_stat: bytes) -> float:
    """User + system CPU seconds of a process from ``/proc/<pid>/stat`` (what
    ``psutil.Process.cpu_times()`` reads; the command name may hold spaces and parentheses)."""
    fields = proc_pid_stat[proc_pid_stat.rindex(b")") + 2 :].split(None, 13)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_threads_rss(proc_pid_stat: bytes) -> tuple[int, int]:
    """Threads and resident bytes of a process from ``/proc/<pid>/stat`` (``num_threads``
    and ``rss`` in pages: the kernel counters ``psutil.Process.num_threads()`` and
    ``memory_info().rss`` read from ``/proc/<pid>/status`` and ``statm``)."""
    fields = proc_pid_stat[proc_pid_stat.rindex(b")") + 2 :].split(None, 22)
    return int(fields[17]), int(fields[21]) * PAGE_SIZE


def proc_ctx_switches(proc_pid_status: bytes) -> tuple[int, int]:
    """Voluntary and involuntary context switches from ``/proc/<pid>/status`` (as
    ``psutil.Process.num_ctx_switches()`` reads them)."""
    vol = proc_pid_status.index(b"\nvoluntary_ctxt_switches:") + 25
    invol = proc_pid_status.index(b"\nnonvoluntary_ctxt_switches:") + 28
    return int(proc_pid_status[vol : proc_pid_status.index(b"\n", vol)]), int(
        proc_pid_status[invol : proc_pid_status.index(b"\n", invol)]
    )


def net_dev_counters(net_dev: bytes) -> dict[str, NetCounters]:
    """Per-interface counters from ``/proc/net/dev`` (the fields ``psutil.net_io_counters(pernic=True)``
    reads: received bytes and packets are the first two numbers, sent bytes and packets the ninth and tenth)."""
    out = {}
    for line in net_dev.split(b"\n")[2:]:
        name, colon, rest = line.rpartition(b":")
        if not colon:
            continue
        v = rest.split()
        out[name.strip().decode()] = NetCounters(float(v[0]), float(v[8]), float(v[1]), float(v[9]))
    return out


def diskstats_counters(diskstats: bytes) -> dict[str, DiskCounters]:
    """Per-device read and written bytes from ``/proc/diskstats`` (sectors of 512 bytes; the
    line formats and fields ``psutil.disk_io_counters(perdisk=True)`` reads)."""
    out = {}
    for line in diskstats.split(b"\n"):
        v = line.split()
        n = len(v)
        if n == 14 or n >= 18:  # Linux 2.6+, a disk: name, reads, merged, sectors read, ms, writes, merged, sectors
            name, rd, wr = v[2], v[5], v[9]
        elif n == 7:  # Linux 2.6+, a partition: name, reads, sectors read, writes, sectors written
            name, rd, wr = v[2], v[4], v[6]
        elif n == 15:  # Linux 2.4: major, minor, reads, name, merged, sectors read, ..., sectors written
            name, rd, wr = v[3], v[5], v[9]
        else:
            continue
        out[name.decode()] = DiskCounters(float(int(rd) * SECTOR_SIZE), float(int(wr) * SECTOR_SIZE))
    return out


def process_cpu_clock(pid: int) -> int | None:
    """The clock id of ``pid``'s CPU-time clock (Linux's ``clock_getcpuclockid``: the scheduler's
    run time of all its threads, user and system, the sum ``/proc/<pid>/stat``'s utime + stime
    are scaled to), or None where it cannot be read. Reading it is one ``clock_gettime`` call, to
    the nanosecond, where ``/proc/<pid>/stat`` has to be formatted, read and parsed and counts
    in clock ticks (10 ms: a tenth of a core over a 0.1 s tick)."""
    if not sys.platform.startswith("linux") or pid <= 0:
        return None
    clock = (~pid << 3) | 2  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    try:
        time.clock_gettime_ns(clock)
    except (OSError, OverflowError):
        return None
    return clock


def _open_proc_file(path: str) -> ProcStatFile | None:
    """The file kept open for per-tick reads, or None (no /proc: psutil is used instead)."""
    try:
        return ProcStatFile(path)
    except OSError:
        return None


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
        self._cpu_file: ProcStatFile | None = None
        self._meminfo_file: ProcStatFile | None = None
        self._net_file: ProcStatFile | None = None
        self._disk_file: ProcStatFile | None = None
        self._proc_file: ProcStatFile | None = None
        self._proc_status_file: ProcStatFile | None = None
        self._proc_stat = b""  # the watched process's /proc/<pid>/stat as read this tick
        self._proc_clock: int | None = None  # the watched process's CPU-time clock (process_cpu_clock)
        self._last_cpu: list[tuple[float, float]] = []
        self._last_proc_cpu: tuple[float, float] | None = None  # (monotonic s, CPU s) of the watched pid
        self._slow: HostSample | None = None
        self._proc_slow: tuple[float, float, float, float] | None = None
        self._proc_slow_due = 0.0
        self._slow_due = 0.0

    def start(self) -> bool:
        self._cpu_file = _open_proc_file(f"{PROC}/stat")
        self._meminfo_file = _open_proc_file(f"{PROC}/meminfo")
        self._net_file = _open_proc_file(f"{PROC}/net/dev")
        self._disk_file = _open_proc_file(f"{PROC}/diskstats")
        self._last_cpu = self._read_cpu()  # the per-core baseline
        # The first reading must cover some CPU time (the kernel counts it in ticks of 10 ms):
        # read at once, every core would read 0% busy and every CPU line would start at 0.
        time.sleep(FIRST_READING_AFTER_S)
        if self.watch_pid is not None:
            try:
                self._proc = psutil.Process(self.watch_pid)
                self._proc_file = _open_proc_file(f"{PROC}/{self.watch_pid}/stat")
                self._proc_clock = process_cpu_clock(self.watch_pid)
                self._proc_status_file = _open_proc_file(f"{PROC}/{self.watch_pid}/status")
                self._last_proc_cpu = None
                self._proc_cpu_percent()  # the process baseline
            except (psutil.Error, OSError) as exc:
                log.warning("watched pid %s is not available (%s)", self.watch_pid, exc)
                self._proc_gone = True
                self._proc = None
        return True

    def close(self) -> None:
        self._proc = None
        self._close_proc_files()
        for f in (self._cpu_file, self._meminfo_file, self._net_file, self._disk_file):
            if f is not None:
                f.close()
        self._cpu_file = self._meminfo_file = self._net_file = self._disk_file = None

    def _close_proc_files(self) -> None:
        for f in (self._proc_file, self._proc_status_file):
            if f is not None:
                f.close()
        self._proc_file = self._proc_status_file = None
        self._proc_clock = None

    def _read_cpu(self) -> list[tuple[float, float]]:
        """Per-core (busy, total) CPU times: one pread of /proc/stat, or psutil without /proc."""
        if self._cpu_file is not None:
            try:
                return per_core_busy_total(self._cpu_file.read())
            except (OSError, ValueError, IndexError):
                log.warning("reading %s failed; reading CPU times through psutil from now on", self._cpu_file.path)
                self._cpu_file.close()
                self._cpu_file = None
        return [_busy_total(t) for t in psutil.cpu_times(percpu=True)]

    def _proc_cpu_percent(self) -> float:
        """CPU of the watched process since the last call, in percent of one core, as
        ``psutil.Process.cpu_percent()`` computes it (0.0 on the first call). Raises
        ``OSError`` or ``psutil.Error`` when the process is gone."""
        if self._proc_clock is not None:
            cpu_s = time.clock_gettime_ns(self._proc_clock) / 1e9
        elif self._proc_file is None:
            return self._proc.cpu_percent()
        else:
            self._proc_stat = data = self._proc_file.read()
            cpu_s = proc_cpu_seconds(data)
        now = time.monotonic()
        last, self._last_proc_cpu = self._last_proc_cpu, (now, cpu_s)
        if last is None or now <= last[0]:
            return 0.0
        return max(0.0, cpu_s - last[1]) / (now - last[0]) * 100.0

    def collect(self, sample: Sample) -> None:
        """Fill ``sample.host`` and ``sample.proc``."""
        sample.host = self.sample_host()
        sample.proc = self.sample_proc()

    def sample_host(self) -> HostSample:
        """Every field once per ``slow_interval_s``; in between, the last reading again with
        every field listed in ``stale`` (one object per reading, shared by those ticks)."""
        now = self._clock()
        if self._slow is None or now >= self._slow_due:
            fresh = self._sample_slow()
            # a reading whose CPU fields are still unknown (within the CPU-time tick of the
            # baseline) is retried at the next tick rather than held for a slow interval
            self._slow_due = now + self.slow_interval_s if fresh.cpu_util_ratio is not None else now
            self._slow = replace(fresh, stale=SLOW_HOST_FIELDS)
            return fresh
        return self._slow

    def _read_meminfo(self) -> tuple[int, int, int, int] | None:
        """MemTotal, MemAvailable, SwapTotal, SwapFree in bytes from one pread of
        /proc/meminfo; None (psutil is used) without the file or these fields."""
        if self._meminfo_file is None:
            return None
        try:
            fields = meminfo_bytes(self._meminfo_file.read())
            return fields[b"MemTotal"], fields[b"MemAvailable"], fields[b"SwapTotal"], fields[b"SwapFree"]
        except (OSError, ValueError, KeyError):
            self._meminfo_file.close()
            self._meminfo_file = None
            return None

    def _sample_slow(self) -> HostSample:
        h = HostSample()
        now_cpu = self._read_cpu()
        elapsed = any(a[1] > b[1] for b, a in zip(self._last_cpu, now_cpu, strict=False))
        if elapsed:
            per_core = busy_ratios(self._last_cpu, now_cpu)
            if per_core:
                h.cpu_util_per_core = per_core
                h.cpu_util_ratio = sum(per_core) / len(per_core)
                h.cpu_util_max_core_ratio = max(per_core)
        if elapsed or not self._last_cpu:
            # A reading within the kernel's CPU-time tick of the baseline says nothing (not 0% busy):
            # the CPU fields stay unknown and the baseline is kept for the next reading.
            self._last_cpu = now_cpu
        try:
            h.load1, h.load5, h.load15 = os.getloadavg()
        except OSError:
            pass
        mem = self._read_meminfo()
        if mem is not None:  # the /proc/meminfo fields psutil reads for these values
            total, available, swap_total, swap_free = mem
        else:
            vm, sw = psutil.virtual_memory(), psutil.swap_memory()
            total, available, swap_total, swap_free = vm.total, vm.available, sw.total, sw.free
        h.host_mem_total_bytes = float(total)
        h.host_mem_available_bytes = float(available)
        h.host_mem_used_bytes = float(total - available)
        h.host_swap_total_bytes = float(swap_total)
        h.host_swap_used_bytes = float(swap_total - swap_free)
        h.net = self._read_net()
        h.disk = self._read_disk()
        return h

    def _read_net(self) -> dict[str, NetCounters]:
        """Per-interface counters: one pread of /proc/net/dev, or psutil without it."""
        if self._net_file is not None:
            try:
                return net_dev_counters(self._net_file.read())
            except (OSError, ValueError, IndexError, UnicodeDecodeError):
                self._net_file.close()
                self._net_file = None
        nics = psutil.net_io_counters(pernic=True) or {}
        return {
            name: NetCounters(float(c.bytes_recv), float(c.bytes_sent), float(c.packets_recv), float(c.packets_sent))
            for name, c in nics.items()
        }

    def _read_disk(self) -> dict[str, DiskCounters]:
        """Per-device counters: one pread of /proc/diskstats, or psutil without it."""
        if self._disk_file is not None:
            try:
                return diskstats_counters(self._disk_file.read())
            except (OSError, ValueError, IndexError, UnicodeDecodeError):
                self._disk_file.close()
                self._disk_file = None
        try:
            disks = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        except (OSError, RuntimeError):
            disks = {}
        return {name: DiskCounters(float(c.read_bytes), float(c.write_bytes)) for name, c in disks.items()}

    def sample_proc(self) -> ProcSample | None:
        """CPU every call; threads, RSS and context switches every ``slow_interval_s``."""
        if self._proc is None:
            return None
        p = self._proc
        slow = self._proc_slow is None or self._clock() >= self._proc_slow_due
        try:
            cpu = self._proc_cpu_percent()
            if slow:
                self._proc_slow = self._read_proc_slow(p)
                self._proc_slow_due = self._clock() + self.slow_interval_s
        except (psutil.Error, OSError) as exc:
            if not self._proc_gone:
                log.warning("watched pid %s is gone (%s); process metrics stop", self.watch_pid, exc)
            self._proc_gone = True
            self._proc = None
            self._close_proc_files()
            return None
        return ProcSample(p.pid, cpu / 100.0, *self._proc_slow, frozenset() if slow else SLOW_PROC_FIELDS)

    def _read_proc_slow(self, p: psutil.Process) -> tuple[float, float, float, float]:
        """Threads, RSS, voluntary and involuntary context switches: from this tick's
        /proc/<pid>/stat and one pread of /proc/<pid>/status, or psutil without them."""
        if self._proc_file is not None and self._proc_status_file is not None:
            try:
                stat = self._proc_file.read() if self._proc_clock is not None else self._proc_stat
                threads, rss = proc_threads_rss(stat)
                vol, invol = proc_ctx_switches(self._proc_status_file.read())
                return float(threads), float(rss), float(vol), float(invol)
            except (ValueError, IndexError):
                self._proc_status_file.close()
                self._proc_status_file = None
        with p.oneshot():
            ctx = p.num_ctx_switches()
            return float(p.num_threads()), float(p.memory_info().rss), float(ctx.voluntary), float(ctx.involuntary)
