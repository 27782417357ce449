"""GPM: two buffers alternated, samples at least 100 ms apart, each metric's own status checked."""

from __future__ import annotations

import time

import pynvml as real
import pytest
from fake_pynvml import FakeGpu

from bottleneck_map.agent.gpm import MIB, GpmReader, gpm_supported
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sampler import Sampler

MS = 1_000_000


def _reader(install_nvml, clock, gpu=None):
    fake = install_nvml([gpu or FakeGpu()], clock_ns=clock.ns)
    m = fake.module
    m.nvmlInit()
    handle = m.nvmlDeviceGetHandleByIndex(0)
    return fake, GpmReader(m, handle, clock_ns=clock.ns, sleep=clock.advance)


def test_buffers_alternate_and_metrics_come_in_base_units(install_nvml, clock):
    fake, r = _reader(install_nvml, clock)
    assert r.read() == {}  # the first call only takes the first sample
    values = []
    for _ in range(4):
        clock.advance(0.1)
        values.append(r.read())
    v = values[-1]
    assert v["gpm_sm_util_ratio"] == pytest.approx(0.80)
    assert v["gpm_sm_occupancy_ratio"] == pytest.approx(0.45)
    assert v["gpm_tensor_active_ratio"] == pytest.approx(0.60)
    assert v["gpm_dram_bw_util_ratio"] == pytest.approx(0.70)
    assert v["gpm_gr_engine_active_ratio"] == pytest.approx(0.90)
    assert v["gpm_pcie_tx_bytes_per_s"] == pytest.approx(12 * MIB)  # MiB/s -> bytes/s
    assert v["gpm_pcie_rx_bytes_per_s"] == pytest.approx(3 * MIB)
    addrs = [a for _, a, _ in fake.gpm_sample_log]
    assert len(set(addrs)) == 2  # exactly two buffers
    assert all(a != b for a, b in zip(addrs, addrs[1:], strict=False))  # alternated
    # each metrics call compares the previous sample with the new one, >= 100 ms apart
    for (_, a1, a2, dt), (prev, new) in zip(fake.gpm_metrics_log, zip(addrs, addrs[1:], strict=False), strict=True):
        assert (a1, a2) == (prev, new)
        assert dt >= 100 * MS


def test_reads_sooner_than_100ms_reuse_values_without_sampling(install_nvml, clock):
    fake, r = _reader(install_nvml, clock)
    r.read()
    clock.advance(0.1)
    first = r.read()
    n = fake.calls["nvmlGpmSampleGet"]
    clock.advance(0.06)
    assert r.read() == first and not r.fresh  # 40 ms early: previous values
    assert fake.calls["nvmlGpmSampleGet"] == n
    clock.advance(0.037)  # 3 ms early: waits it out, then samples
    r.read()
    assert r.fresh and fake.calls["nvmlGpmSampleGet"] == n + 1
    assert fake.gpm_metrics_log[-1][-1] == 100 * MS
    clock.advance(0.11)
    r.read()
    assert fake.calls["nvmlGpmSampleGet"] == n + 2
    assert all(dt >= 100 * MS for *_, dt in fake.gpm_metrics_log)


def test_each_metric_status_is_checked(install_nvml, clock):
    gpu = FakeGpu(
        gpm_status={
            real.NVML_GPM_METRIC_SM_OCCUPANCY: real.NVML_ERROR_NOT_SUPPORTED,
            real.NVML_GPM_METRIC_DRAM_BW_UTIL: real.NVML_ERROR_UNKNOWN,
        }
    )
    fake, r = _reader(install_nvml, clock, gpu)
    r.read()
    clock.advance(0.1)
    v = r.read()
    assert "gpm_sm_occupancy_ratio" not in v  # not supported: absent
    assert "gpm_dram_bw_util_ratio" not in v  # failed this time: absent
    assert v["gpm_sm_util_ratio"] == pytest.approx(0.8)  # the others still come
    assert "gpm_sm_occupancy_ratio" in r.unsupported
    del gpu.gpm_status[real.NVML_GPM_METRIC_DRAM_BW_UTIL]
    del gpu.gpm_status[real.NVML_GPM_METRIC_SM_OCCUPANCY]
    clock.advance(0.1)
    fake.gpm_requested.clear()
    v = r.read()
    assert real.NVML_GPM_METRIC_SM_OCCUPANCY not in fake.gpm_requested
    assert real.NVML_GPM_METRIC_DRAM_BW_UTIL in fake.gpm_requested
    assert v["gpm_dram_bw_util_ratio"] == pytest.approx(0.7)  # asked again, back
    assert "gpm_sm_occupancy_ratio" not in v  # never asked again
    assert len(v) == 6


def test_unsupported_device_gets_no_gpm(install_nvml):
    fake = install_nvml([FakeGpu(gpm_supported=False)])
    src = NvmlSource()
    src.start()
    assert not gpm_supported(fake.module, src.devices[0].handle) and src.devices[0].gpm is None
    (g,) = src.sample(0)
    assert g.gpm_sm_occupancy_ratio is None and g.gpu_util_ratio is not None
    assert fake.calls["nvmlGpmSampleAlloc"] == 0


def test_sampler_at_10hz_keeps_gpm_samples_100ms_apart(install_nvml):
    fake = install_nvml(2)
    sampler = Sampler(interval_s=0.1, sources=[NvmlSource(gpm_interval_s=0.1)])
    sampler.start()
    time.sleep(0.75)
    sampler.stop()
    for gpu in (0, 1):
        times = [t for i, _, t in fake.gpm_sample_log if i == gpu]
        assert len(times) >= 4
        assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 100 * MS
    last = sampler.latest().gpus[0]
    assert last.gpm_dram_bw_util_ratio == pytest.approx(0.7)
    fresh = [not (s.gpus[0].stale & {"gpm_dram_bw_util_ratio"}) for s in sampler.samples()[1:]]
    assert sum(fresh) >= 0.5 * len(fresh)  # timer jitter is waited out: most ticks get a new GPM reading


def test_default_gpm_window_is_200ms_at_10hz_and_ticks_between_carry_it_as_stale(install_nvml):
    fake = install_nvml(1)
    sampler = Sampler(interval_s=0.1, sources=[NvmlSource()])
    sampler.start()
    time.sleep(1.05)
    sampler.stop()
    times = [t for _, _, t in fake.gpm_sample_log]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 4 and min(gaps) >= 200 * MS
    samples = sampler.samples()[1:]
    fresh = [not (s.gpus[0].stale & {"gpm_dram_bw_util_ratio"}) for s in samples]
    assert 0.3 * len(fresh) <= sum(fresh) <= 0.7 * len(fresh)  # about every other 10 Hz tick
    assert all(s.gpus[0].gpm_dram_bw_util_ratio is not None for s in samples[2:])  # stale ticks keep the value


def test_gpm_spacing_below_nvmls_minimum_is_refused(install_nvml):
    install_nvml(1)
    with pytest.raises(ValueError, match="gpm_interval_s"):
        NvmlSource(gpm_interval_s=0.05)
