"""Metric names, units and sources: the agent's Prometheus names and dcgm-exporter's.

``--metric-names prometheus`` (default) follows Prometheus naming: base units,
``_ratio``, ``_bytes``, ``_celsius``, ``_hertz``, ``_watts``, ``_joules_total``,
labels ``gpu``, ``uuid``, ``gpu_model``, ``hostname``. No label is named like one of
vLLM's (``model_name``, ``engine``), so a dashboard's ``label_values(model_name)``
lists served models only when the agent and vLLM share a Prometheus.

``--metric-names dcgm`` emits dcgm-exporter's field names and units for the GPU
metrics (percent, MiB, MHz, W, mJ; ``DCGM_FI_PROF_*`` ratios and bytes/s) with
dcgm-exporter's labels ``gpu``, ``UUID``, ``device``, ``modelName``,
``Hostname``, ``pci_bus_id``, so dcgm Grafana dashboards work unchanged. Host,
process and agent metrics keep their Prometheus names in both modes (dcgm has
none). This table is the single source for the collector and ``docs/agent.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PREFIX = "bmap"
MIB = 1024.0 * 1024.0


class NameScheme(str, Enum):
    prometheus = "prometheus"
    dcgm = "dcgm"


@dataclass(frozen=True, slots=True)
class GpuMetric:
    """One GPU metric. ``field`` is the :class:`GpuSample` attribute (base units)."""

    field: str
    prom: str  # full Prometheus name as exposed (counters end in _total)
    kind: str  # "gauge" | "counter"
    unit: str
    help: str
    source: str  # NVML call
    dcgm: str | None = None
    dcgm_scale: float = 1.0  # multiply the base-unit value by this for the dcgm unit
    dcgm_unit: str = ""
    dcgm_fallback: str | None = None  # GpuSample attribute used when ``field`` is absent (dcgm only)


_UTIL = "nvmlDeviceGetUtilizationRates"
_MEM = "nvmlDeviceGetMemoryInfo"
_CLOCK = "nvmlDeviceGetClockInfo"
_MAXCLOCK = "nvmlDeviceGetMaxClockInfo"
_GPM = "nvmlGpmMetricsGet"

GPU_METRICS: tuple[GpuMetric, ...] = (
    GpuMetric("gpu_util_ratio", "bmap_gpu_utilization_ratio", "gauge", "ratio",
              "Fraction of the last sample period a kernel was running on the GPU.", f"{_UTIL}().gpu",
              "DCGM_FI_DEV_GPU_UTIL", 100.0, "%"),
    GpuMetric("mem_util_ratio", "bmap_gpu_memory_utilization_ratio", "gauge", "ratio",
              "Fraction of the last sample period device memory was being read or written.", f"{_UTIL}().memory",
              "DCGM_FI_DEV_MEM_COPY_UTIL", 100.0, "%"),
    GpuMetric("gpu_mem_used_bytes", "bmap_gpu_memory_used_bytes", "gauge", "bytes",
              "Device memory in use.", f"{_MEM}().used", "DCGM_FI_DEV_FB_USED", 1 / MIB, "MiB"),
    GpuMetric("gpu_mem_free_bytes", "bmap_gpu_memory_free_bytes", "gauge", "bytes",
              "Device memory free.", f"{_MEM}().free", "DCGM_FI_DEV_FB_FREE", 1 / MIB, "MiB"),
    GpuMetric("gpu_mem_total_bytes", "bmap_gpu_memory_total_bytes", "gauge", "bytes",
              "Device memory in total.", f"{_MEM}().total", "DCGM_FI_DEV_FB_TOTAL", 1 / MIB, "MiB"),
    GpuMetric("pcie_tx_bytes_per_s", "bmap_gpu_pcie_transmit_bytes_per_second", "gauge", "bytes/s",
              "PCIe transmit throughput from the GPU (NVML, 20 ms window).",
              "nvmlDeviceGetPcieThroughput(TX_BYTES) KB/s x 1000"),
    GpuMetric("pcie_rx_bytes_per_s", "bmap_gpu_pcie_receive_bytes_per_second", "gauge", "bytes/s",
              "PCIe receive throughput into the GPU (NVML, 20 ms window).",
              "nvmlDeviceGetPcieThroughput(RX_BYTES) KB/s x 1000"),
    GpuMetric("power_w", "bmap_gpu_power_watts", "gauge", "W",
              "Power draw.", "nvmlDeviceGetPowerUsage mW / 1000", "DCGM_FI_DEV_POWER_USAGE", 1.0, "W"),
    GpuMetric("power_limit_w", "bmap_gpu_power_limit_watts", "gauge", "W",
              "Enforced power limit.", "nvmlDeviceGetEnforcedPowerLimit mW / 1000",
              "DCGM_FI_DEV_POWER_MGMT_LIMIT", 1.0, "W"),
    GpuMetric("energy_j", "bmap_gpu_energy_joules_total", "counter", "J",
              "Energy consumed since the driver was loaded.", "nvmlDeviceGetTotalEnergyConsumption mJ / 1000",
              "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1000.0, "mJ"),
    GpuMetric("temperature_c", "bmap_gpu_temperature_celsius", "gauge", "Celsius",
              "GPU die temperature.", "nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)",
              "DCGM_FI_DEV_GPU_TEMP", 1.0, "C"),
    GpuMetric("sm_clock_hz", "bmap_gpu_sm_clock_hertz", "gauge", "Hz",
              "SM clock.", f"{_CLOCK}(NVML_CLOCK_SM) MHz x 1e6", "DCGM_FI_DEV_SM_CLOCK", 1e-6, "MHz"),
    GpuMetric("sm_clock_max_hz", "bmap_gpu_sm_clock_max_hertz", "gauge", "Hz",
              "Maximum SM clock.", f"{_MAXCLOCK}(NVML_CLOCK_SM) MHz x 1e6",
              "DCGM_FI_DEV_MAX_SM_CLOCK", 1e-6, "MHz"),
    GpuMetric("mem_clock_hz", "bmap_gpu_memory_clock_hertz", "gauge", "Hz",
              "Memory clock.", f"{_CLOCK}(NVML_CLOCK_MEM) MHz x 1e6", "DCGM_FI_DEV_MEM_CLOCK", 1e-6, "MHz"),
    GpuMetric("mem_clock_max_hz", "bmap_gpu_memory_clock_max_hertz", "gauge", "Hz",
              "Maximum memory clock.", f"{_MAXCLOCK}(NVML_CLOCK_MEM) MHz x 1e6",
              "DCGM_FI_DEV_MAX_MEM_CLOCK", 1e-6, "MHz"),
    GpuMetric("clock_event_reasons", "bmap_gpu_clock_event_reasons", "gauge", "bitmask",
              "Bitmask of the reasons clocks are held down (nvmlClocksEventReason*).",
              "nvmlDeviceGetCurrentClocksEventReasons", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 1.0, "bitmask"),
    GpuMetric("gpm_gr_engine_active_ratio", "bmap_gpu_graphics_engine_active_ratio", "gauge", "ratio",
              "Fraction of time the graphics/compute engine was active (GPM).",
              f"{_GPM} NVML_GPM_METRIC_GRAPHICS_UTIL % / 100", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 1.0, "ratio"),
    GpuMetric("gpm_sm_util_ratio", "bmap_gpu_sm_active_ratio", "gauge", "ratio",
              "Fraction of SMs busy (GPM).", f"{_GPM} NVML_GPM_METRIC_SM_UTIL % / 100",
              "DCGM_FI_PROF_SM_ACTIVE", 1.0, "ratio"),
    GpuMetric("gpm_sm_occupancy_ratio", "bmap_gpu_sm_occupancy_ratio", "gauge", "ratio",
              "Resident warps relative to the theoretical maximum (GPM).",
              f"{_GPM} NVML_GPM_METRIC_SM_OCCUPANCY % / 100", "DCGM_FI_PROF_SM_OCCUPANCY", 1.0, "ratio"),
    GpuMetric("gpm_tensor_active_ratio", "bmap_gpu_tensor_active_ratio", "gauge", "ratio",
              "Fraction of time the tensor pipes were active (GPM, any tensor op).",
              f"{_GPM} NVML_GPM_METRIC_ANY_TENSOR_UTIL % / 100", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 1.0, "ratio"),
    GpuMetric("gpm_dram_bw_util_ratio", "bmap_gpu_dram_active_ratio", "gauge", "ratio",
              "DRAM bandwidth used relative to the theoretical maximum (GPM).",
              f"{_GPM} NVML_GPM_METRIC_DRAM_BW_UTIL % / 100", "DCGM_FI_PROF_DRAM_ACTIVE", 1.0, "ratio"),
    GpuMetric("gpm_pcie_tx_bytes_per_s", "bmap_gpu_gpm_pcie_transmit_bytes_per_second", "gauge", "bytes/s",
              "PCIe transmit rate from the GPU over the GPM sample period.",
              f"{_GPM} NVML_GPM_METRIC_PCIE_TX_PER_SEC MiB/s x 1048576", "DCGM_FI_PROF_PCIE_TX_BYTES", 1.0,
              "bytes/s", dcgm_fallback="pcie_tx_bytes_per_s"),
    GpuMetric("gpm_pcie_rx_bytes_per_s", "bmap_gpu_gpm_pcie_receive_bytes_per_second", "gauge", "bytes/s",
              "PCIe receive rate into the GPU over the GPM sample period.",
              f"{_GPM} NVML_GPM_METRIC_PCIE_RX_PER_SEC MiB/s x 1048576", "DCGM_FI_PROF_PCIE_RX_BYTES", 1.0,
              "bytes/s", dcgm_fallback="pcie_rx_bytes_per_s"),
    GpuMetric("proc_gpu_mem_bytes", "bmap_gpu_process_memory_used_bytes", "gauge", "bytes",
              "Device memory used by the watched process (label pid).",
              "nvmlDeviceGetComputeRunningProcesses().usedGpuMemory"),
    GpuMetric("proc_gpu_util_ratio", "bmap_gpu_process_sm_utilization_ratio", "gauge", "ratio",
              "SM utilisation of the watched process (label pid).",
              "nvmlDeviceGetProcessUtilization().smUtil % / 100"),
)  # fmt: skip

GPU_LOST = "bmap_gpu_lost"
CLOCK_EVENT_ACTIVE = "bmap_gpu_clock_event_active"


@dataclass(frozen=True, slots=True)
class OtherMetric:
    """A host, process or agent metric (same name in both schemes)."""

    name: str
    kind: str
    unit: str
    help: str
    source: str
    labels: tuple[str, ...] = ("hostname",)


OTHER_METRICS: tuple[OtherMetric, ...] = (
    OtherMetric(GPU_LOST, "gauge", "0/1", "1 when the GPU stopped answering NVML (GpuIsLost/Unknown); re-init is retried with backoff.", "NVML errors", ("gpu", "hostname")),
    OtherMetric(CLOCK_EVENT_ACTIVE, "gauge", "0/1", "1 while the named clock-event reason holds the clocks down.", "nvmlDeviceGetCurrentClocksEventReasons bits", ("gpu", "uuid", "gpu_model", "hostname", "reason")),
    OtherMetric("bmap_host_cpu_utilization_ratio", "gauge", "ratio", "CPU utilisation of the whole host over the last second (read once a second).", "/proc/stat cpuN lines (as psutil.cpu_times(percpu=True)), mean"),
    OtherMetric("bmap_host_cpu_core_utilization_ratio", "gauge", "ratio", "CPU utilisation of one logical CPU over the last second (read once a second).", "/proc/stat cpuN lines (as psutil.cpu_times(percpu=True))", ("cpu", "hostname")),
    OtherMetric("bmap_host_load1", "gauge", "tasks", "1-minute load average.", "os.getloadavg()"),
    OtherMetric("bmap_host_load5", "gauge", "tasks", "5-minute load average.", "os.getloadavg()"),
    OtherMetric("bmap_host_load15", "gauge", "tasks", "15-minute load average.", "os.getloadavg()"),
    OtherMetric("bmap_host_memory_used_bytes", "gauge", "bytes", "Host memory in use (total - available).", "/proc/meminfo MemTotal - MemAvailable (as psutil.virtual_memory())"),
    OtherMetric("bmap_host_memory_available_bytes", "gauge", "bytes", "Host memory available.", "/proc/meminfo MemAvailable (as psutil.virtual_memory().available)"),
    OtherMetric("bmap_host_memory_total_bytes", "gauge", "bytes", "Host memory in total.", "/proc/meminfo MemTotal (as psutil.virtual_memory().total)"),
    OtherMetric("bmap_host_swap_used_bytes", "gauge", "bytes", "Swap in use.", "/proc/meminfo SwapTotal - SwapFree (as psutil.swap_memory().used)"),
    OtherMetric("bmap_host_swap_total_bytes", "gauge", "bytes", "Swap in total.", "/proc/meminfo SwapTotal (as psutil.swap_memory().total)"),
    OtherMetric("bmap_host_network_receive_bytes_total", "counter", "bytes", "Bytes received by the interface.", "/proc/net/dev (as psutil.net_io_counters(pernic=True))", ("device", "hostname")),
    OtherMetric("bmap_host_network_transmit_bytes_total", "counter", "bytes", "Bytes sent by the interface.", "/proc/net/dev (as psutil.net_io_counters(pernic=True))", ("device", "hostname")),
    OtherMetric("bmap_host_network_receive_packets_total", "counter", "packets", "Packets received by the interface.", "/proc/net/dev (as psutil.net_io_counters(pernic=True))", ("device", "hostname")),
    OtherMetric("bmap_host_network_transmit_packets_total", "counter", "packets", "Packets sent by the interface.", "/proc/net/dev (as psutil.net_io_counters(pernic=True))", ("device", "hostname")),
    OtherMetric("bmap_host_disk_read_bytes_total", "counter", "bytes", "Bytes read from the block device.", "/proc/diskstats sectors x 512 (as psutil.disk_io_counters(perdisk=True))", ("device", "hostname")),
    OtherMetric("bmap_host_disk_written_bytes_total", "counter", "bytes", "Bytes written to the block device.", "/proc/diskstats sectors x 512 (as psutil.disk_io_counters(perdisk=True))", ("device", "hostname")),
    OtherMetric("bmap_process_cpu_ratio", "gauge", "cores", "CPU used by the watched process, as a fraction of one core (can exceed 1).", "the process's CPU-time clock (clock_getcpuclockid: user + system run time, what /proc/<pid>/stat's utime + stime count in clock ticks, as psutil.Process.cpu_percent() reads them)", ("pid", "hostname")),
    OtherMetric("bmap_process_threads", "gauge", "threads", "Threads of the watched process.", "/proc/<pid>/stat num_threads (as psutil.Process.num_threads())", ("pid", "hostname")),
    OtherMetric("bmap_process_resident_memory_bytes", "gauge", "bytes", "Resident memory of the watched process.", "/proc/<pid>/stat rss x page size (as psutil.Process.memory_info().rss)", ("pid", "hostname")),
    OtherMetric("bmap_process_context_switches_total", "counter", "switches", "Context switches of the watched process (label kind: voluntary, involuntary).", "/proc/<pid>/status ctxt_switches (as psutil.Process.num_ctx_switches())", ("pid", "kind", "hostname")),
    OtherMetric("bmap_agent_samples_total", "counter", "samples", "Samples taken by the agent.", "agent"),
    OtherMetric("bmap_agent_missed_ticks_total", "counter", "ticks", "Sampling ticks skipped because a tick overran the interval.", "agent"),
    OtherMetric("bmap_agent_sample_duration_seconds", "gauge", "seconds", "Time the last sample took.", "agent"),
    OtherMetric("bmap_agent_sample_age_seconds", "gauge", "seconds", "Age of the sample this scrape reports.", "agent"),
    OtherMetric("bmap_agent_interval_seconds", "gauge", "seconds", "Configured sampling interval.", "agent"),
    OtherMetric("bmap_agent_nvml_available", "gauge", "0/1", "1 when NVML is initialised; 0 in host-only mode.", "agent"),
)  # fmt: skip

PROM_LABELS = ("gpu", "uuid", "gpu_model", "hostname")
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id")


def gpu_labels(scheme: NameScheme, index: int, uuid: str | None, name: str | None, bus: str | None, host: str) -> dict:
    """Label values of one GPU in the given scheme (missing values become empty strings)."""
    if scheme is NameScheme.dcgm:
        return {
            "gpu": str(index),
            "UUID": uuid or "",
            "device": f"nvidia{index}",
            "modelName": name or "",
            "Hostname": host,
            "pci_bus_id": bus or "",
        }
    return {"gpu": str(index), "uuid": uuid or "", "gpu_model": name or "", "hostname": host}


def all_metric_names(scheme: NameScheme) -> list[str]:
    """Every metric name the agent can expose in ``scheme`` (as it appears on /metrics)."""
    gpu = [m.dcgm if scheme is NameScheme.dcgm and m.dcgm else m.prom for m in GPU_METRICS]
    return gpu + [m.name for m in OTHER_METRICS]


def reference_markdown() -> str:
    """The metrics reference tables of ``docs/agent.md``, generated from this module."""
    lines = [
        "| Prometheus name | unit | dcgm name (`--metric-names dcgm`) | dcgm unit | NVML source |",
        "|---|---|---|---|---|",
    ]
    for m in GPU_METRICS:
        dcgm = f"`{m.dcgm}`" if m.dcgm else "(Prometheus name kept)"
        if m.dcgm_fallback:
            dcgm += f" (falls back to `{m.dcgm_fallback}` without GPM)"
        lines.append(f"| `{m.prom}` | {m.unit} | {dcgm} | {m.dcgm_unit or '-'} | `{m.source}` |")
    lines += ["", "| name (both schemes) | type | unit | labels | source | meaning |", "|---|---|---|---|---|---|"]
    for o in OTHER_METRICS:
        lines.append(f"| `{o.name}` | {o.kind} | {o.unit} | {', '.join(o.labels)} | `{o.source}` | {o.help} |")
    return "\n".join(lines) + "\n"
