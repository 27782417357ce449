"""NvmlSource over the pynvml test double: the real sampling code maps, converts,
skips unsupported fields, survives lost GPUs and missing libraries."""

from __future__ import annotations

import logging
import sys

import pynvml as real
import pytest
from fake_pynvml import GIB, FakeGpu

import bottleneck_map.agent.nvml as nvml_mod
from bottleneck_map.agent.nvml import NvmlSource


@pytest.fixture(autouse=True)
def _no_start_up_probe(monkeypatch):
    """These tests script results call by call and count calls; the start-up probe for blocking
    queries (tested on its own below) calls each per-tick query a few times more."""
    monkeypatch.setattr(nvml_mod, "BLOCKING_QUERY_S", None)


def test_values_are_mapped_and_converted_to_base_units(install_nvml):
    install_nvml([FakeGpu(name="NVIDIA H100 80GB HBM3", uuid="GPU-abc", bus_id=b"00000000:17:00.0")])
    src = NvmlSource(gpm=False)
    assert src.start()
    (g,) = src.sample(0)
    assert (g.index, g.name, g.uuid, g.pci_bus_id, g.lost) == (
        0,
        "NVIDIA H100 80GB HBM3",
        "GPU-abc",
        "00000000:17:00.0",
        False,
    )
    assert g.gpu_util_ratio == pytest.approx(0.87)
    assert g.mem_util_ratio == pytest.approx(0.41)
    assert g.gpu_mem_total_bytes == 80 * GIB
    assert g.gpu_mem_used_bytes == 30 * GIB
    assert g.gpu_mem_free_bytes == 50 * GIB
    assert g.pcie_tx_bytes_per_s == 1_500 * 1000  # KB/s -> bytes/s
    assert g.pcie_rx_bytes_per_s == 250_000 * 1000
    assert g.power_w == pytest.approx(312.5)  # mW -> W
    assert g.power_limit_w == pytest.approx(700.0)
    assert g.energy_j == pytest.approx((5_000_000 + 31_250) / 1000)  # mJ -> J
    assert g.temperature_c == 61
    assert g.sm_clock_hz == 1_755e6  # MHz -> Hz
    assert g.mem_clock_hz == 2_619e6
    assert g.sm_clock_max_hz == 1_980e6
    assert g.mem_clock_max_hz == 2_619e6
    assert g.clock_event_reasons == 0x4 | 0x40
    assert g.gpm_sm_util_ratio is None  # GPM disabled here
    (g2,) = src.sample(1)
    assert g2.energy_j - g.energy_j == pytest.approx(31.25)  # the counter grows


def test_not_supported_fields_are_absent_and_not_asked_again(install_nvml):
    gpu = FakeGpu(not_supported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetCurrentClocksEventReasons"})
    fake = install_nvml([gpu])
    src = NvmlSource(gpm=False)
    src.start()
    for t in range(5):
        (g,) = src.sample(t)
        assert g.power_w is None  # absent, never zero
        assert g.clock_event_reasons is None
        assert g.temperature_c == 61  # the other fields still come
        assert g.power_limit_w == pytest.approx(700.0)
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetPowerUsage")] == 1
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetCurrentClocksEventReasons")] == 1
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetClockInfo")] == 10  # SM and memory clocks, every tick


def test_a_transient_error_drops_the_field_for_one_tick_only(install_nvml):
    gpu = FakeGpu(fail_next={"nvmlDeviceGetPowerUsage": [real.NVML_ERROR_TIMEOUT]})
    fake = install_nvml([gpu])
    src = NvmlSource(gpm=False)
    src.start()
    (g1,) = src.sample(0)
    (g2,) = src.sample(1)
    assert g1.power_w is None and g1.temperature_c == 61
    assert g2.power_w == pytest.approx(312.5)
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetPowerUsage")] == 2


def test_slow_fields_are_read_once_a_second_and_marked_stale_in_between(install_nvml, clock):
    gpu = FakeGpu(processes=[(4242, GIB)], process_util=[(4242, 20, 10), (4242, 40, 20)])
    fake = install_nvml([gpu])
    src = NvmlSource(watch_pid=4242, gpm=False, clock=clock, slow_interval_s=1.0)
    src.start()
    (g,) = src.sample(0)
    assert g.stale == frozenset() and g.temperature_c == 61
    assert g.proc_gpu_util_ratio == pytest.approx(0.30)  # mean of the samples since the last read
    gpu.temp_c = 70
    clock.advance(0.5)
    (g,) = src.sample(1)
    assert g.temperature_c == 61 and "temperature_c" in g.stale and "proc_gpu_mem_bytes" in g.stale
    assert g.power_w is not None and "power_w" not in g.stale
    clock.advance(0.5)
    (g,) = src.sample(2)
    assert g.temperature_c == 70 and not g.stale
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetTemperature")] == 2
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetPowerUsage")] == 3


@pytest.mark.parametrize("code", [real.NVML_ERROR_GPU_IS_LOST, real.NVML_ERROR_UNKNOWN])
def test_lost_gpu_is_marked_then_recovered_by_reinit_with_backoff(install_nvml, clock, code, caplog):
    gpus = [FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1")]
    fake = install_nvml(gpus)
    src = NvmlSource(gpm=False, clock=clock, backoff_initial_s=1.0, backoff_max_s=8.0)
    src.start()
    assert [g.lost for g in src.sample(0)] == [False, False]

    if code == real.NVML_ERROR_GPU_IS_LOST:  # lost mid-run: every call on GPU 1 now fails
        gpus[1].lost = True
    else:  # one Unknown error, then the GPU answers again
        gpus[1].fail_next["nvmlDeviceGetUtilizationRates"] = [code]
    caplog.set_level(logging.WARNING, "bottleneck_map.agent")
    out = src.sample(1)
    assert [(g.index, g.lost) for g in out] == [(0, False), (1, True)]
    assert out[1].power_w is None and out[0].power_w is not None
    assert src.status.lost
    assert "marking the device lost" in caplog.text
    inits = fake.calls["nvmlInit"]

    clock.advance(0.5)  # before the backoff expires: no re-init yet, GPU 0 still sampled
    out = src.sample(2)
    assert fake.calls["nvmlInit"] == inits
    assert [(g.index, g.lost) for g in out] == [(0, False), (1, True)]

    if code == real.NVML_ERROR_GPU_IS_LOST:
        clock.advance(0.6)  # first retry: GPU 1 still lost, so the next wait doubles
        out = src.sample(3)
        assert fake.calls["nvmlInit"] == inits + 1
        assert [g.lost for g in out] == [False, True]
        clock.advance(1.5)  # < 2 s: no retry
        src.sample(4)
        assert fake.calls["nvmlInit"] == inits + 1
        gpus[1].lost = False  # the GPU comes back
        clock.advance(0.6)
    else:
        clock.advance(0.6)
    out = src.sample(5)
    assert [(g.index, g.lost) for g in out] == [(0, False), (1, False)]
    assert out[1].power_w == pytest.approx(312.5)
    assert src.status.recoveries == 1 and not src.status.lost


def test_failing_reinit_keeps_retrying_and_never_raises(install_nvml, clock):
    gpus = [FakeGpu()]
    fake = install_nvml(gpus)
    src = NvmlSource(gpm=False, clock=clock, backoff_initial_s=1.0, backoff_max_s=4.0)
    src.start()
    gpus[0].lost = True
    src.sample(0)
    fake.init_errors = [real.NVML_ERROR_UNKNOWN] * 3
    waits = []
    last = fake.calls["nvmlInit"]
    for step in range(40):
        clock.advance(0.5)
        out = src.sample(step)
        assert [g.lost for g in out] == [True]
        if fake.calls["nvmlInit"] != last:
            waits.append(clock.t)
            last = fake.calls["nvmlInit"]
    gaps = [round(b - a, 1) for a, b in zip(waits, waits[1:], strict=False)]
    assert gaps[:3] == [2.0, 4.0, 4.0]  # exponential backoff, capped


def test_library_missing_means_host_only_said_once(install_nvml, caplog):
    install_nvml(library_missing=True)
    caplog.set_level(logging.WARNING, "bottleneck_map.agent")
    src = NvmlSource()
    assert src.start() is False
    for t in range(5):
        assert src.sample(t) == []
    assert caplog.text.count("host only") == 1
    assert src.status.host_only_reason and "Library Not Found" in src.status.host_only_reason
    src.close()


def test_driver_not_loaded_means_host_only(install_nvml):
    install_nvml(driver_missing=True)
    src = NvmlSource()
    assert src.start() is False
    assert src.sample(0) == []


def test_pynvml_not_installed_means_host_only(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    caplog.set_level(logging.WARNING, "bottleneck_map.agent")
    src = NvmlSource()
    assert src.start() is False
    assert src.sample(0) == []
    assert "not installed" in caplog.text


def test_watched_process_memory_and_utilisation(install_nvml):
    gpu = FakeGpu(processes=[(111, 2 * GIB), (4242, 7 * GIB)], process_util=[(4242, 35, 1_000), (111, 90, 1_001)])
    fake = install_nvml([gpu])
    src = NvmlSource(watch_pid=4242, gpm=False, slow_interval_s=0)
    src.start()
    (g,) = src.sample(0)
    assert g.proc_gpu_mem_bytes == 7 * GIB
    assert g.proc_gpu_util_ratio == pytest.approx(0.35)
    (g,) = src.sample(1)  # no newer utilisation sample: NVML says NotFound
    assert g.proc_gpu_util_ratio is None
    assert g.proc_gpu_mem_bytes == 7 * GIB
    gpu.process_util.append((4242, 50, 2_000))
    (g,) = src.sample(2)
    assert g.proc_gpu_util_ratio == pytest.approx(0.5)
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetProcessUtilization")] == 3


def test_process_not_on_this_gpu_or_memory_not_available(install_nvml):
    install_nvml([FakeGpu(processes=[(4242, None)]), FakeGpu(processes=[])])
    src = NvmlSource(watch_pid=4242, gpm=False)
    src.start()
    g0, g1 = src.sample(0)
    assert g0.proc_gpu_mem_bytes is None  # NVML_VALUE_NOT_AVAILABLE -> None, not 0
    assert g1.proc_gpu_mem_bytes is None


def test_close_shuts_nvml_down_and_frees_gpm_buffers(install_nvml):
    fake = install_nvml(2)
    src = NvmlSource()
    src.start()
    src.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert len(fake.gpm_freed) == 4  # two buffers per GPU


def test_a_non_nvml_exception_costs_one_field_and_one_log_line(install_nvml, caplog, monkeypatch):
    fake = install_nvml(2)

    def broken(handle):
        raise ZeroDivisionError("binding bug")

    monkeypatch.setattr(fake.module, "nvmlDeviceGetPowerUsage", broken)
    caplog.set_level(logging.ERROR, "bottleneck_map.agent")
    src = NvmlSource(gpm=False)
    src.start()
    for t in range(3):
        out = src.sample(t)
        assert [g.index for g in out] == [0, 1]
        assert all(g.power_w is None and g.energy_j is not None for g in out)
    assert caplog.text.count("raised ZeroDivisionError") == 2  # once per GPU


def test_gpm_metrics_land_in_their_own_fields(install_nvml, clock):
    gpm = {
        real.NVML_GPM_METRIC_GRAPHICS_UTIL: 11.0,
        real.NVML_GPM_METRIC_SM_UTIL: 22.0,
        real.NVML_GPM_METRIC_SM_OCCUPANCY: 33.0,
        real.NVML_GPM_METRIC_DRAM_BW_UTIL: 44.0,
        real.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 55.0,
        real.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 6.0,
        real.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 7.0,
    }
    install_nvml([FakeGpu(gpm_values=gpm, processes=[(4242, GIB)])], clock_ns=clock.ns)
    src = NvmlSource(watch_pid=4242, clock=clock, gpm_interval_s=0.1)
    src.start()
    reader = src.devices[0].gpm
    reader._clock_ns, reader._sleep = clock.ns, clock.advance  # GPM spacing on the test's clock
    (first,) = src.sample(0)
    assert first.gpm_sm_util_ratio is None and "gpm_sm_util_ratio" not in first.stale  # one sample: no window yet
    clock.advance(0.1)
    (g,) = src.sample(1)
    got = (
        g.gpm_gr_engine_active_ratio,
        g.gpm_sm_util_ratio,
        g.gpm_sm_occupancy_ratio,
        g.gpm_dram_bw_util_ratio,
        g.gpm_tensor_active_ratio,
    )
    assert got == pytest.approx((0.11, 0.22, 0.33, 0.44, 0.55))
    assert (g.gpm_pcie_tx_bytes_per_s, g.gpm_pcie_rx_bytes_per_s) == (6.0 * 1024**2, 7.0 * 1024**2)
    # the fields around the GPM ones are still the right ones
    assert g.clock_event_reasons == 0x4 | 0x40 and g.proc_gpu_mem_bytes == GIB
    assert g.stale == frozenset({"temperature_c", "power_limit_w", "proc_gpu_mem_bytes", "proc_gpu_util_ratio"})
    clock.advance(0.05)
    (early,) = src.sample(2)  # too early for a GPM sample: the last values, listed as stale
    assert early.gpm_dram_bw_util_ratio == pytest.approx(0.44) and "gpm_dram_bw_util_ratio" in early.stale


def test_fields_reader_reads_the_numbers_the_structure_holds():
    from bottleneck_map.agent.nvml import fields_reader

    mem = real.c_nvmlMemory_t(total=80 * GIB, free=50 * GIB, used=30 * GIB)
    assert fields_reader(real.c_nvmlMemory_t, ("total", "free", "used"))(mem) == (80 * GIB, 50 * GIB, 30 * GIB)
    util = real.c_nvmlUtilization_t(gpu=87, memory=41)
    assert fields_reader(real.c_nvmlUtilization_t, ("gpu", "memory"))(util) == (87, 41)
    v2 = real.c_nvmlMemory_v2_t(version=7, total=8, reserved=1, free=3, used=4)
    assert fields_reader(real.c_nvmlMemory_v2_t, ("total", "free", "used"))(v2) == (8, 3, 4)  # gaps skipped
    with pytest.raises(TypeError):  # not integers: the caller reads attributes instead
        fields_reader(real.nvmlPciInfo_t, ("busId",))


def test_a_query_dropped_on_one_gpu_is_still_asked_on_the_others(install_nvml):
    gpus = [FakeGpu(not_supported={"nvmlDeviceGetPowerUsage"}), FakeGpu(uuid="GPU-1")]
    fake = install_nvml(gpus)
    src = NvmlSource(gpm=False)
    src.start()
    for t in range(3):
        g0, g1 = src.sample(t)
        assert g0.power_w is None and g1.power_w == pytest.approx(312.5)
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetPowerUsage")] == 1
    assert fake.calls_by_gpu[(1, "nvmlDeviceGetPowerUsage")] == 3


def _slow(fn, seconds: float, times: int | None = None):
    """``fn`` taking ``seconds`` longer (wall clock) on its first ``times`` calls (all when None)."""
    import time

    calls = [0]

    def slow(*args):
        calls[0] += 1
        if times is None or calls[0] <= times:
            time.sleep(seconds)
        return fn(*args)

    return slow


def test_a_per_tick_query_that_blocks_at_start_up_is_read_once_a_second(install_nvml, clock, caplog):
    fake = install_nvml(2)
    fake.module.nvmlDeviceGetPcieThroughput = _slow(fake.module.nvmlDeviceGetPcieThroughput, 0.012)
    src = NvmlSource(gpm=False, clock=clock, slow_interval_s=1.0, blocking_query_s=0.005)
    caplog.set_level(logging.WARNING, "bottleneck_map.agent")
    src.start()
    assert src.status.blocking_queries == ["pcie_tx", "pcie_rx"]
    assert "reading pcie_tx_bytes_per_s once a second instead of every tick" in caplog.text
    probed = fake.calls_by_gpu[(0, "nvmlDeviceGetPcieThroughput")]
    first = src.sample(0)
    assert [g.pcie_tx_bytes_per_s for g in first] == [1_500 * 1000] * 2 and not first[0].stale
    for t in (1, 2, 3):
        clock.advance(0.25)
        for g in src.sample(t):
            assert g.pcie_rx_bytes_per_s == 250_000 * 1000  # carried over on /metrics
            assert {"pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s", "temperature_c"} <= g.stale
            assert g.power_w == pytest.approx(312.5) and "power_w" not in g.stale  # still every tick
    clock.advance(0.25)
    again = src.sample(4)
    assert not again[1].stale and again[1].pcie_tx_bytes_per_s == 1_500 * 1000
    assert fake.calls_by_gpu[(0, "nvmlDeviceGetPcieThroughput")] == probed + 4  # two reads of TX and RX
    assert fake.calls_by_gpu[(1, "nvmlDeviceGetPcieThroughput")] == 4
    assert fake.calls_by_gpu[(1, "nvmlDeviceGetPowerUsage")] == 5


def test_stale_pcie_is_null_in_bundle_rows(install_nvml, clock):
    from bottleneck_map.agent.sample import Sample, to_columns

    fake = install_nvml(1)
    fake.module.nvmlDeviceGetPcieThroughput = _slow(fake.module.nvmlDeviceGetPcieThroughput, 0.012)
    src = NvmlSource(gpm=False, clock=clock, blocking_query_s=0.005)
    src.start()
    samples = []
    for t in range(3):
        samples.append(Sample(ts_ns=t, gpus=src.sample(t)))
        clock.advance(0.1)
    columns = to_columns(samples)
    assert columns["pcie_tx_bytes_per_s"] == [1_500 * 1000, None, None]
    assert columns["power_w"] == [pytest.approx(312.5)] * 3


def test_quick_queries_and_a_single_slow_call_stay_per_tick(install_nvml):
    fake = install_nvml(1)
    # one slow call (a preempted thread on a busy host) is not a blocking query: the fastest of three counts
    fake.module.nvmlDeviceGetPowerUsage = _slow(fake.module.nvmlDeviceGetPowerUsage, 0.012, times=1)
    src = NvmlSource(gpm=False, blocking_query_s=0.005)
    src.start()
    assert src.status.blocking_queries == []
    (g,) = src.sample(0)
    (g,) = src.sample(1)
    assert g.pcie_tx_bytes_per_s == 1_500 * 1000 and g.power_w == pytest.approx(312.5)
    assert not {"pcie_tx_bytes_per_s", "power_w"} & g.stale  # read on this tick
