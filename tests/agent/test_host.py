"""HostSource over the real psutil on this machine."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import psutil
import pytest

from bottleneck_map.agent.host import HostSource
from bottleneck_map.agent.sample import Sample


def test_host_sample_has_sane_values():
    src = HostSource()
    src.start()
    h = src.sample_host()  # at once: start() leaves the first reading a measurable interval
    assert len(h.cpu_util_per_core) == psutil.cpu_count()
    assert all(0.0 <= c <= 1.0 for c in h.cpu_util_per_core)
    assert 0.0 <= h.cpu_util_ratio <= h.cpu_util_max_core_ratio <= 1.0
    assert 0 < h.host_mem_used_bytes <= h.host_mem_total_bytes
    assert h.load1 is not None and h.load1 >= 0
    assert "lo" in h.net and h.net["lo"].rx_bytes >= 0
    assert h.net_total("rx_bytes") >= h.net["lo"].rx_bytes


def test_watched_process_is_sampled():
    src = HostSource(watch_pid=os.getpid())
    src.start()
    s = Sample(ts_ns=0)
    src.collect(s)
    p = s.proc
    assert p.pid == os.getpid()
    assert p.rss_bytes > 10 * 1024 * 1024
    assert p.num_threads >= 1
    assert p.cpu_ratio is not None and p.cpu_ratio >= 0
    assert p.ctx_switches_voluntary >= 0


def test_watched_process_that_exits_stops_process_metrics_once(caplog):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        src = HostSource(watch_pid=child.pid)
        src.start()
        assert src.sample_proc() is not None
    finally:
        child.kill()
        child.wait()
    caplog.set_level(logging.WARNING, "bottleneck_map.agent")
    assert src.sample_proc() is None
    assert src.sample_proc() is None
    assert caplog.text.count("is gone") == 1
    assert src.sample_host().host_mem_total_bytes > 0  # the host keeps being sampled


def test_slow_host_fields_once_per_interval(clock):
    src = HostSource(slow_interval_s=1.0, clock=clock)
    src.start()
    first = src.sample_host()
    clock.advance(0.3)
    second = src.sample_host()
    clock.advance(0.8)
    third = src.sample_host()
    assert not first.stale and not third.stale
    assert {"load1", "host_mem_used_bytes", "net", "disk"} <= second.stale
    assert second.host_mem_total_bytes == first.host_mem_total_bytes  # carried over
    assert second.cpu_util_per_core == first.cpu_util_per_core  # carried over, like the other host fields
    assert {"cpu_util_ratio", "cpu_util_per_core", "cpu_util_max_core_ratio"} <= second.stale
    assert third.cpu_util_per_core is not first.cpu_util_per_core  # read again


def test_per_core_ratios_from_cpu_times():
    from collections import namedtuple

    from bottleneck_map.agent.host import cpu_busy_ratios

    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = [T(10, 0, 5, 85, 0, 0, 0, 0, 0, 0), T(0, 0, 0, 100, 0, 0, 0, 0, 0, 0)]
    after = [T(40, 0, 15, 135, 10, 0, 0, 0, 5, 0), T(0, 0, 0, 200, 0, 0, 0, 0, 0, 0)]
    # core 0: busy +40 (user 30 incl. 5 guest counted once, system 10), idle+iowait +60 -> 0.4
    assert cpu_busy_ratios(before, after) == [0.4, 0.0]


def test_two_host_sources_do_not_reset_each_other(monkeypatch):
    from collections import namedtuple

    import bottleneck_map.agent.host as host_mod

    T = namedtuple("T", "user idle")
    readings = iter([[T(0, 0)], [T(0, 0)], [T(50, 50)], [T(50, 150)]])
    monkeypatch.setattr(host_mod.psutil, "cpu_times", lambda percpu: next(readings))
    monkeypatch.setattr(host_mod, "PROC", "/nonexistent")  # no /proc: the psutil path
    a, b = HostSource(), HostSource()
    a.start()  # baseline (0, 0)
    b.start()  # baseline (0, 0)
    assert b.sample_host().cpu_util_per_core == [0.5]  # (50 busy of 100)
    assert a.sample_host().cpu_util_per_core == [0.25]  # a's own window: 50 busy of 200, not b's last 100


def test_a_reading_within_the_cpu_tick_of_its_baseline_is_unknown_not_idle(monkeypatch):
    """No CPU time counted since the baseline: the CPU fields are unknown (a line would otherwise
    start at 0% busy), the baseline is kept, and the next tick reads again."""
    from collections import namedtuple

    import bottleneck_map.agent.host as host_mod

    T = namedtuple("T", "user idle")
    readings = iter([[T(10, 90)], [T(10, 90)], [T(40, 100)]])
    monkeypatch.setattr(host_mod.psutil, "cpu_times", lambda percpu: next(readings))
    monkeypatch.setattr(host_mod, "PROC", "/nonexistent")  # no /proc: the psutil path
    src = HostSource(slow_interval_s=60.0)
    src.start()
    first = src.sample_host()
    assert first.cpu_util_ratio is None and not first.cpu_util_per_core
    assert first.host_mem_total_bytes  # the other fields are read
    second = src.sample_host()  # retried at the next tick, not held for the slow interval
    assert second.cpu_util_per_core == [0.75]  # (30 busy of 40) since the kept baseline
    assert "cpu_util_ratio" not in second.stale


PROC_STAT = b"""cpu  50 0 15 235 10 0 0 0 5 0
cpu0 40 0 15 135 10 0 0 0 5 0
cpu1 10 0 0 100 0 0 0 0 0 0
intr 4021963 0 0 1027 1144
ctxt 123
cpu_not_a_core_line_after_intr 1 2 3
"""


def test_proc_stat_parsing_matches_the_psutil_arithmetic():
    from collections import namedtuple

    from bottleneck_map.agent.host import _busy_total, busy_ratios, per_core_busy_total

    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    pairs = per_core_busy_total(PROC_STAT)
    assert pairs == [_busy_total(T(40, 0, 15, 135, 10, 0, 0, 0, 5, 0)), _busy_total(T(10, 0, 0, 100, 0, 0, 0, 0, 0, 0))]
    assert pairs == [(55.0, 200.0), (10.0, 110.0)]
    assert busy_ratios([(0.0, 0.0), (10.0, 10.0)], pairs) == [55 / 200, 0.0]


def test_proc_stat_reads_agree_with_psutil_on_this_machine():
    from bottleneck_map.agent.host import CLOCK_TICKS, ProcStatFile, _busy_total, per_core_busy_total, proc_cpu_seconds

    f = ProcStatFile("/proc/stat")
    ours = per_core_busy_total(f.read())
    theirs = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]
    assert len(ours) == len(theirs) == psutil.cpu_count()
    for (busy, total), (busy_s, total_s) in zip(ours, theirs, strict=True):
        assert abs(busy / CLOCK_TICKS - busy_s) < 0.5 and abs(total / CLOCK_TICKS - total_s) < 0.5
    again = per_core_busy_total(f.read())  # the same descriptor reads fresh numbers
    assert all(t2 >= t1 for (_, t1), (_, t2) in zip(ours, again, strict=True))
    f.close()
    me = ProcStatFile(f"/proc/{os.getpid()}/stat")
    cpu = psutil.Process().cpu_times()
    assert abs(proc_cpu_seconds(me.read()) - (cpu.user + cpu.system)) < 0.1
    me.close()


def test_process_cpu_seconds_with_a_command_name_holding_parentheses():
    from bottleneck_map.agent.host import CLOCK_TICKS, proc_cpu_seconds

    line = b"42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0"
    assert proc_cpu_seconds(line) == 300 / CLOCK_TICKS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process CPU clocks")
def test_process_cpu_clock_reads_what_proc_pid_stat_counts():
    import time

    from bottleneck_map.agent.host import CLOCK_TICKS, ProcStatFile, proc_cpu_seconds, process_cpu_clock

    clock = process_cpu_clock(os.getpid())
    assert clock is not None
    t = time.process_time()
    while time.process_time() - t < 0.2:  # some CPU to count
        pass
    stat = proc_cpu_seconds(ProcStatFile(f"/proc/{os.getpid()}/stat").read())
    by_clock = time.clock_gettime_ns(clock) / 1e9
    assert abs(by_clock - time.process_time()) < 0.01  # the same clock as our own process CPU time
    assert abs(by_clock - stat) <= 3 / CLOCK_TICKS + 0.01  # /proc counts the same time in clock ticks
    assert process_cpu_clock(2**22 + 12345) is None  # no such process (above Linux's pid_max)


def test_watched_process_cpu_is_measured_between_ticks():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        src = HostSource(watch_pid=child.pid)
        src.start()
        import time

        time.sleep(0.3)
        busy = src.sample_proc()
        assert busy is not None and 0.1 < busy.cpu_ratio <= 1.05  # spinning: up to one core
    finally:
        child.kill()
        child.wait()
    src.close()


def test_meminfo_fields_match_psutil():
    from bottleneck_map.agent.host import meminfo_bytes

    text = b"MemTotal:       16000 kB\nMemAvailable:    4000 kB\nHugePages_Total:       0\nSwapFree: 10 kB\n"
    fields = meminfo_bytes(text)
    assert fields[b"MemTotal"] == 16000 * 1024 and fields[b"MemAvailable"] == 4000 * 1024
    assert fields[b"HugePages_Total"] == 0 and fields[b"SwapFree"] == 10 * 1024
    src = HostSource()
    src.start()
    h = src.sample_host()
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    assert h.host_mem_total_bytes == vm.total and h.host_swap_total_bytes == sw.total
    assert abs(h.host_mem_available_bytes - vm.available) < 0.05 * vm.total  # read a moment apart
    src.close()


DISKSTATS = b"""   8       0 sda 100 5 2000 30 50 4 800 20 0 40 50 0 0 0 0 0 0
   8       1 sda1 10 400 20 160
   3     0   8 hda 1 9 8 6 2 11 8 8 8 8 8
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11
   1       2 odd 1 2
"""


def test_diskstats_line_formats_as_psutil_reads_them():
    from bottleneck_map.agent.host import diskstats_counters

    d = diskstats_counters(DISKSTATS)
    assert set(d) == {"sda", "sda1", "hda", "nvme0n1"}  # a line in no known format is skipped
    assert (d["sda"].read_bytes, d["sda"].write_bytes) == (2000 * 512, 800 * 512)  # 2.6+ disk, 4.18+ fields
    assert (d["sda1"].read_bytes, d["sda1"].write_bytes) == (400 * 512, 160 * 512)  # 2.6 partition
    assert (d["hda"].read_bytes, d["hda"].write_bytes) == (9 * 512, 11 * 512)  # 2.4
    assert (d["nvme0n1"].read_bytes, d["nvme0n1"].write_bytes) == (3 * 512, 7 * 512)  # 2.6+ disk


def test_net_disk_and_process_reads_agree_with_psutil_on_this_machine():
    from bottleneck_map.agent.host import (
        ProcStatFile,
        diskstats_counters,
        net_dev_counters,
        proc_ctx_switches,
        proc_threads_rss,
    )

    net = net_dev_counters(ProcStatFile("/proc/net/dev").read())
    nics = psutil.net_io_counters(pernic=True)
    assert set(net) == set(nics)
    assert abs(net["lo"].rx_bytes - nics["lo"].bytes_recv) < 10_000_000 and net["lo"].rx_packets > 0
    assert net["lo"].tx_packets == pytest.approx(nics["lo"].packets_sent, abs=10_000)
    disk = diskstats_counters(ProcStatFile("/proc/diskstats").read())
    theirs = psutil.disk_io_counters(perdisk=True)
    assert set(disk) == set(theirs)
    for name, c in theirs.items():
        assert abs(disk[name].read_bytes - c.read_bytes) < 64 * 1024 * 1024, name  # read a moment apart
    me = psutil.Process()
    with me.oneshot():
        threads, rss, ctx = me.num_threads(), me.memory_info().rss, me.num_ctx_switches()
    ours_threads, ours_rss = proc_threads_rss(ProcStatFile(f"/proc/{os.getpid()}/stat").read())
    assert ours_threads == threads and abs(ours_rss - rss) < 4 * 1024 * 1024
    vol, invol = proc_ctx_switches(ProcStatFile(f"/proc/{os.getpid()}/status").read())
    assert ctx.voluntary <= vol < ctx.voluntary + 1000 and ctx.involuntary <= invol < ctx.involuntary + 1000


def test_process_threads_and_rss_with_a_command_name_holding_parentheses():
    from bottleneck_map.agent.host import PAGE_SIZE, proc_threads_rss

    line = b"42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 4096 25 18446744073709551615"
    assert proc_threads_rss(line) == (3, 25 * PAGE_SIZE)
