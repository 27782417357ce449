"""What one agent tick measured: plain dataclasses, converted to base units at the source.

A field the hardware or driver cannot report is ``None`` (never zero). One
:class:`Sample` holds the host reading, the watched process reading and one
:class:`GpuSample` per GPU; :func:`to_rows` turns it into ``samples`` table rows
(one ``source="host"`` row and one ``source="gpu"`` row per device), and
:func:`to_columns` turns several samples into the same rows held column-wise
(what the sampler hands to the bundle writer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from itertools import zip_longest
from operator import attrgetter
from typing import Any, ClassVar

from bottleneck_map.schema import SAMPLES


@dataclass(slots=True)
class GpuSample:
    """One GPU at one tick, in base units (ratios 0..1, bytes, W, J, Hz, Celsius)."""

    index: int
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    lost: bool = False
    # nvmlDeviceGetUtilizationRates
    gpu_util_ratio: float | None = None
    mem_util_ratio: float | None = None
    # nvmlDeviceGetMemoryInfo
    gpu_mem_used_bytes: float | None = None
    gpu_mem_free_bytes: float | None = None
    gpu_mem_total_bytes: float | None = None
    # nvmlDeviceGetPcieThroughput (KB/s converted to bytes/s)
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    # power, energy, temperature, clocks
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    temperature_c: float | None = None
    sm_clock_hz: float | None = None
    sm_clock_max_hz: float | None = None
    mem_clock_hz: float | None = None
    mem_clock_max_hz: float | None = None
    clock_event_reasons: int | None = None
    # GPM (Hopper and newer)
    gpm_gr_engine_active_ratio: float | None = None
    gpm_sm_util_ratio: float | None = None
    gpm_sm_occupancy_ratio: float | None = None
    gpm_dram_bw_util_ratio: float | None = None
    gpm_tensor_active_ratio: float | None = None
    gpm_pcie_tx_bytes_per_s: float | None = None
    gpm_pcie_rx_bytes_per_s: float | None = None
    # the watched process on this GPU
    proc_gpu_mem_bytes: float | None = None
    proc_gpu_util_ratio: float | None = None
    # fields carried over from an earlier tick (slow cadence): exposed on /metrics, null in bundle rows
    stale: frozenset[str] = frozenset()
    null: ClassVar[None] = None  # what a stale field reads as in bundle rows (see to_columns)


@dataclass(slots=True)
class NetCounters:
    """Cumulative counters of one network interface since boot."""

    rx_bytes: float
    tx_bytes: float
    rx_packets: float
    tx_packets: float


@dataclass(slots=True)
class DiskCounters:
    """Cumulative counters of one block device since boot."""

    read_bytes: float
    write_bytes: float


@dataclass(slots=True)
class HostSample:
    """The host at one tick (psutil)."""

    cpu_util_ratio: float | None = None
    cpu_util_per_core: list[float] = field(default_factory=list)
    cpu_util_max_core_ratio: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    host_mem_used_bytes: float | None = None
    host_mem_available_bytes: float | None = None
    host_mem_total_bytes: float | None = None
    host_swap_used_bytes: float | None = None
    host_swap_total_bytes: float | None = None
    net: dict[str, NetCounters] = field(default_factory=dict)
    disk: dict[str, DiskCounters] = field(default_factory=dict)
    # fields carried over from an earlier tick (slow cadence): exposed on /metrics, null in bundle rows
    stale: frozenset[str] = frozenset()

    def net_total(self, attr: str) -> float | None:
        return sum(getattr(c, attr) for c in self.net.values()) if self.net else None

    def disk_total(self, attr: str) -> float | None:
        return sum(getattr(c, attr) for c in self.disk.values()) if self.disk else None


@dataclass(slots=True)
class ProcSample:
    """The watched process at one tick (psutil). ``cpu_ratio`` is a fraction of one core (can exceed 1)."""

    pid: int
    cpu_ratio: float | None = None
    num_threads: float | None = None
    rss_bytes: float | None = None
    ctx_switches_voluntary: float | None = None
    ctx_switches_involuntary: float | None = None
    stale: frozenset[str] = frozenset()


@dataclass(slots=True)
class Sample:
    """Everything one tick measured, stamped on the bundle clock."""

    ts_ns: int
    host: HostSample | None = None
    proc: ProcSample | None = None
    gpus: list[GpuSample] = field(default_factory=list)
    duration_ns: int | None = None


_SAMPLE_COLUMNS = frozenset(SAMPLES.names)
_GPU_COLUMNS = tuple(
    f.name for f in fields(GpuSample) if f.name in _SAMPLE_COLUMNS and f.name not in ("device", "instance")
)


def gpu_row(ts_ns: int, gpu: GpuSample, instance: str | None = None) -> dict[str, Any]:
    """One ``source="gpu"`` row of the samples table."""
    row: dict[str, Any] = {"ts_ns": ts_ns, "source": "gpu", "device": str(gpu.index), "instance": instance}
    for name in _GPU_COLUMNS:
        row[name] = None if name in gpu.stale else getattr(gpu, name)
    return row


def host_row(ts_ns: int, host: HostSample | None, proc: ProcSample | None, instance: str | None = None) -> dict:
    """The ``source="host"`` row: host totals plus the watched process."""
    row: dict[str, Any] = {"ts_ns": ts_ns, "source": "host", "device": "host", "instance": instance}
    if host is not None:
        host_fields = dict(
            cpu_util_ratio=host.cpu_util_ratio,
            cpu_util_max_core_ratio=host.cpu_util_max_core_ratio,
            cpu_util_per_core=list(host.cpu_util_per_core) or None,
            load1=host.load1,
            host_mem_used_bytes=host.host_mem_used_bytes,
            host_mem_total_bytes=host.host_mem_total_bytes,
            host_swap_used_bytes=host.host_swap_used_bytes,
            net_rx_bytes_total=host.net_total("rx_bytes"),
            net_tx_bytes_total=host.net_total("tx_bytes"),
            net_rx_packets_total=host.net_total("rx_packets"),
            net_tx_packets_total=host.net_total("tx_packets"),
            disk_read_bytes_total=host.disk_total("read_bytes"),
            disk_write_bytes_total=host.disk_total("write_bytes"),
        )
        fresh = not host.stale  # host fields are only written on the tick that read them
        row.update(host_fields if fresh else dict.fromkeys(host_fields))
    if proc is not None:
        fresh = not proc.stale
        row.update(
            proc_cpu_ratio=proc.cpu_ratio,
            proc_num_threads=proc.num_threads if fresh else None,
            proc_rss_bytes=proc.rss_bytes if fresh else None,
            proc_ctx_switches_voluntary_total=proc.ctx_switches_voluntary if fresh else None,
            proc_ctx_switches_involuntary_total=proc.ctx_switches_involuntary if fresh else None,
        )
    return row


def to_rows(sample: Sample, instance: str | None = None) -> list[dict[str, Any]]:
    """Rows for the bundle's ``samples`` table: one host row (when host data exists) and one per GPU."""
    rows = []
    if sample.host is not None or sample.proc is not None:
        rows.append(host_row(sample.ts_ns, sample.host, sample.proc, instance))
    rows.extend(gpu_row(sample.ts_ns, g, instance) for g in sample.gpus)
    return rows


_KEY_COLUMNS = ("ts_ns", "source", "device", "instance")
_HOST_COLUMNS = tuple(n for n in host_row(0, HostSample(), ProcSample(pid=0)) if n not in _KEY_COLUMNS)
_ROW_COLUMNS = _KEY_COLUMNS + _GPU_COLUMNS + _HOST_COLUMNS
_GPU_VALUES = attrgetter(*_GPU_COLUMNS)
_NO_GPU_VALUES = (None,) * len(_GPU_COLUMNS)
_NO_HOST_VALUES = (None,) * len(_HOST_COLUMNS)


_GPU_GETTERS: dict[frozenset[str], Callable[[GpuSample], tuple[Any, ...]]] = {}


def _gpu_values_without(stale: frozenset[str]) -> Callable[[GpuSample], tuple[Any, ...]]:
    """A getter of a GpuSample's row values that reads the ``stale`` columns from the class's
    ``null`` (None): one tuple built in C per row, no test per field. Made once per stale
    set (a handful: the slow fields, GPM, both) and cached."""
    getter = _GPU_GETTERS.get(stale)
    if getter is None:
        getter = attrgetter(*("null" if n in stale else n for n in _GPU_COLUMNS))
        if len(_GPU_GETTERS) < 64:
            _GPU_GETTERS[stale] = getter
    return getter


def to_columns(samples: Sequence[Sample], instance: str | None = None) -> dict[str, list[Any]]:
    """The rows :func:`to_rows` gives for ``samples``, in the same order, as columns
    (column name -> one value per row), for ``BundleWriter.extend_columns``. GPU rows
    are read straight off the :class:`GpuSample` slots, without a dict per row, and
    stop at their last column: the host columns after it are filled in as None by the
    transposition (``zip_longest``)."""
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for sample in samples:
        ts = sample.ts_ns
        if sample.host is not None or sample.proc is not None:
            append((ts, "host", "host", instance, *_NO_GPU_VALUES, *_host_values(sample.host, sample.proc)))
        for g in sample.gpus:
            stale, i = g.stale, g.index
            values = (_GPU_VALUES if not stale else _gpu_values_without(stale))(g)
            append((ts, "gpu", _DEVICES[i] if i < _N_DEVICES else str(i), instance, *values))
    if not rows:
        return {}
    columns = dict(zip(_ROW_COLUMNS, map(list, zip_longest(*rows))))  # noqa: B905 - shorter without host rows
    for name in _ROW_COLUMNS[len(columns) :]:  # GPU rows only: the host columns are null in all of them
        columns[name] = [None] * len(rows)
    return columns


def _host_values(host: HostSample | None, proc: ProcSample | None) -> tuple[Any, ...]:
    """The values of :func:`host_row` in the order of ``_HOST_COLUMNS``, without its dict."""
    if host is None or host.stale:  # host fields are only written on the tick that read them
        values: tuple[Any, ...] = _NO_HOST_ROW
    else:
        values = (
            host.cpu_util_ratio,
            host.cpu_util_max_core_ratio,
            list(host.cpu_util_per_core) or None,
            host.load1,
            host.host_mem_used_bytes,
            host.host_mem_total_bytes,
            host.host_swap_used_bytes,
            host.net_total("rx_bytes"),
            host.net_total("tx_bytes"),
            host.net_total("rx_packets"),
            host.net_total("tx_packets"),
            host.disk_total("read_bytes"),
            host.disk_total("write_bytes"),
        )
    if proc is None:
        return values + _NO_PROC_ROW
    if proc.stale:
        return (*values, proc.cpu_ratio, None, None, None, None)
    return (
        *values,
        proc.cpu_ratio,
        proc.num_threads,
        proc.rss_bytes,
        proc.ctx_switches_voluntary,
        proc.ctx_switches_involuntary,
    )


_NO_HOST_ROW = (None,) * 13
_NO_PROC_ROW = (None,) * 5
_N_DEVICES = 64
_DEVICES = tuple(str(i) for i in range(_N_DEVICES))  # the device column of GPU rows, made once
