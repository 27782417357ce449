"""The custom Collector: Prometheus names and dcgm-exporter names, from the latest sample only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_pynvml import FakeGpu
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.agent.collector import AgentCollector
from bottleneck_map.agent.host import HostSource
from bottleneck_map.agent.names import GPU_METRICS, NameScheme, all_metric_names
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sampler import Sampler

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent.md"
MIB = 1024 * 1024
VLLM_LABELS = {"model_name", "engine"}  # the labels on every vllm:* series


def scrape(sampler: Sampler, scheme: str) -> dict[str, list]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(sampler, scheme, hostname="node-1"))
    text = generate_latest(reg).decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples, name, **labels):
    hits = [v for lab, v in samples[name] if all(lab.get(k) == val for k, val in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


@pytest.fixture
def sampler(install_nvml):
    install_nvml([FakeGpu(uuid="GPU-a", gpm_supported=False), FakeGpu(uuid="GPU-b")])
    s = Sampler(interval_s=1, sources=[HostSource(), NvmlSource(gpm_interval_s=0.1)], watch_pid=None)
    s.open()
    s.sample_once()
    time.sleep(0.11)  # GPM needs two samples at least 100 ms apart
    s.sample_once()
    yield s
    s.stop()


def test_prometheus_names_units_and_labels(sampler):
    m = scrape(sampler, "prometheus")
    lab = {"gpu": "1", "uuid": "GPU-b", "gpu_model": "NVIDIA H100 80GB HBM3", "hostname": "node-1"}
    assert one(m, "bmap_gpu_utilization_ratio", **lab) == pytest.approx(0.87)
    assert one(m, "bmap_gpu_memory_used_bytes", **lab) == 30 * 1024**3
    assert one(m, "bmap_gpu_power_watts", **lab) == pytest.approx(312.5)
    assert one(m, "bmap_gpu_energy_joules_total", **lab) > 5000
    assert one(m, "bmap_gpu_temperature_celsius", **lab) == 61
    assert one(m, "bmap_gpu_sm_clock_hertz", **lab) == 1755e6
    assert one(m, "bmap_gpu_pcie_receive_bytes_per_second", **lab) == 250e6
    assert one(m, "bmap_gpu_sm_occupancy_ratio", **lab) == pytest.approx(0.45)
    assert one(m, "bmap_gpu_clock_event_active", gpu="0", reason="sw_power_cap") == 1
    assert one(m, "bmap_gpu_clock_event_active", gpu="0", reason="hw_thermal") == 1
    assert one(m, "bmap_gpu_clock_event_active", gpu="0", reason="hw_slowdown") == 0
    assert one(m, "bmap_gpu_lost", gpu="0") == 0
    assert 0 <= one(m, "bmap_host_cpu_utilization_ratio", hostname="node-1") <= 1
    assert one(m, "bmap_host_cpu_core_utilization_ratio", cpu="0") >= 0
    assert one(m, "bmap_host_network_receive_bytes_total", device="lo") >= 0
    assert one(m, "bmap_agent_nvml_available") == 1
    assert one(m, "bmap_agent_samples_total") == 2
    # GPU 0 has no GPM: its GPM series are absent, not zero
    assert [lab for lab, _ in m["bmap_gpu_sm_occupancy_ratio"]] == [lab]


def test_dcgm_names_units_and_labels(sampler):
    m = scrape(sampler, "dcgm")
    lab = {"gpu": "1", "UUID": "GPU-b", "device": "nvidia1", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-1"}
    assert one(m, "DCGM_FI_DEV_GPU_UTIL", **lab) == pytest.approx(87)  # percent
    assert one(m, "DCGM_FI_DEV_MEM_COPY_UTIL", **lab) == pytest.approx(41)
    assert one(m, "DCGM_FI_DEV_FB_USED", **lab) == pytest.approx(30 * 1024)  # MiB
    assert one(m, "DCGM_FI_DEV_FB_FREE", **lab) == pytest.approx(50 * 1024)
    assert one(m, "DCGM_FI_DEV_SM_CLOCK", **lab) == pytest.approx(1755)  # MHz
    assert one(m, "DCGM_FI_DEV_MEM_CLOCK", **lab) == pytest.approx(2619)
    assert one(m, "DCGM_FI_DEV_GPU_TEMP", **lab) == 61
    assert one(m, "DCGM_FI_DEV_POWER_USAGE", **lab) == pytest.approx(312.5)  # W
    assert one(m, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", **lab) > 5_000_000  # mJ
    assert one(m, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", **lab) == 0x44
    assert one(m, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", **lab) == pytest.approx(0.9)  # ratios
    assert one(m, "DCGM_FI_PROF_SM_ACTIVE", **lab) == pytest.approx(0.8)
    assert one(m, "DCGM_FI_PROF_SM_OCCUPANCY", **lab) == pytest.approx(0.45)
    assert one(m, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", **lab) == pytest.approx(0.6)
    assert one(m, "DCGM_FI_PROF_DRAM_ACTIVE", **lab) == pytest.approx(0.7)
    assert one(m, "DCGM_FI_PROF_PCIE_TX_BYTES", **lab) == pytest.approx(12 * MIB)  # bytes/s
    # GPU 0 has no GPM: PCIe falls back to NVML's throughput counter, DCP ratios are absent
    assert one(m, "DCGM_FI_PROF_PCIE_RX_BYTES", gpu="0") == pytest.approx(250e6)
    assert [lab["gpu"] for lab, _ in m["DCGM_FI_PROF_DRAM_ACTIVE"]] == ["1"]
    assert not any(name.startswith("bmap_gpu_utilization") for name in m)
    assert one(m, "bmap_host_cpu_utilization_ratio") >= 0  # host metrics keep their names


@pytest.mark.parametrize("scheme", ["prometheus", "dcgm"])
def test_no_series_carries_a_label_vllm_uses(sampler, scheme):
    # vLLM's dashboards fill $model_name from label_values(model_name): a GPU model name there
    # would be taken for the served model when the agent and vLLM share a Prometheus
    m = scrape(sampler, scheme)
    clashing = {(name, key) for name, rows in m.items() for lab, _ in rows for key in lab if key in VLLM_LABELS}
    assert not clashing
    gpu_series = [lab for name, rows in m.items() if name.startswith(("bmap_gpu_", "DCGM_")) for lab, _ in rows]
    model_key = "modelName" if scheme == "dcgm" else "gpu_model"
    assert any(lab.get(model_key) == "NVIDIA H100 80GB HBM3" for lab in gpu_series)


def test_unsupported_field_is_absent_from_the_exposition(install_nvml):
    install_nvml([FakeGpu(not_supported={"nvmlDeviceGetPowerUsage"}, gpm_supported=False)])
    s = Sampler(interval_s=1, sources=[NvmlSource(gpm_interval_s=0.1)])
    s.sample_once()
    for scheme, name in (("prometheus", "bmap_gpu_power_watts"), ("dcgm", "DCGM_FI_DEV_POWER_USAGE")):
        m = scrape(s, scheme)
        assert name not in m
        assert len(m["bmap_gpu_lost"]) == 1


def test_a_scrape_never_calls_nvml(install_nvml):
    fake = install_nvml(2)
    s = Sampler(interval_s=1, sources=[NvmlSource(gpm_interval_s=0.1)])
    s.sample_once()
    before = sum(fake.calls.values())
    for scheme in ("prometheus", "dcgm", "prometheus"):
        scrape(s, scheme)
    assert sum(fake.calls.values()) == before


def test_lost_gpu_is_reported_as_lost(install_nvml):
    gpus = [FakeGpu(), FakeGpu()]
    install_nvml(gpus)
    s = Sampler(interval_s=1, sources=[NvmlSource(gpm=False)])
    s.sample_once()
    gpus[1].lost = True
    s.sample_once()
    m = scrape(s, "prometheus")
    assert one(m, "bmap_gpu_lost", gpu="1") == 1 and one(m, "bmap_gpu_lost", gpu="0") == 0
    assert [lab["gpu"] for lab, _ in m["bmap_gpu_power_watts"]] == ["0"]


def test_host_only_and_before_the_first_sample(install_nvml):
    install_nvml(library_missing=True)
    s = Sampler(interval_s=1, sources=[HostSource(), NvmlSource(gpm_interval_s=0.1)])
    s.open()
    m = scrape(s, "prometheus")
    assert one(m, "bmap_agent_nvml_available") == 0 and "bmap_host_cpu_utilization_ratio" not in m
    s.sample_once()
    m = scrape(s, "dcgm")
    assert "bmap_gpu_lost" not in m and not any(k.startswith("DCGM") for k in m)
    assert one(m, "bmap_host_memory_total_bytes") > 0


def test_every_metric_name_is_documented():
    text = DOCS.read_text()
    for scheme in NameScheme:
        for name in all_metric_names(scheme):
            assert f"`{name}`" in text, f"{name} missing from docs/agent.md"
    for m in GPU_METRICS:
        assert m.source.split("(")[0].split()[0] in text


def test_docs_reference_tables_are_current():
    from bottleneck_map.agent.names import reference_markdown

    text = DOCS.read_text()
    stale = [line for line in reference_markdown().splitlines() if line and line not in text]
    assert not stale, "docs/agent.md is out of date with agent/names.py: " + "\n".join(stale[:3])
