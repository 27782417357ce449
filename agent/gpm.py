"""GPU Performance Monitoring (GPM) metrics of one device (Hopper and newer).

GPM metrics are computed by NVML from two samples taken at different times. A
:class:`GpmReader` owns two sample buffers and alternates them: each read fills
the older buffer and asks ``nvmlGpmMetricsGet`` for the metrics between the
previous sample and the new one. Samples are taken at least ``min_spacing_ns``
(100 ms) apart: a read up to 5 ms early waits the difference out, one that
comes sooner returns the previous values (``fresh`` False) without touching
the hardware. Every metric's own ``nvmlReturn`` is checked: a metric
that is not supported is dropped for good, any other failure leaves it absent
for that read only.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import operator
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger("bottleneck_map.agent")

MIB = 1024 * 1024
_set = object.__setattr__
MIN_SPACING_NS = 100_000_000  # NVML's guidance: GPM samples at least 100 ms apart
# The agent's default GPM window: twice the minimum. A GPM metric is an average over the window
# between two samples, so a longer window loses nothing but time resolution (5 per second still
# resolves the agent's 1 s analysis windows), and it halves the per-GPU cost of a sample, the
# largest per-tick cost of the agent at 10 Hz (docs/performance.md).
DEFAULT_SPACING_NS = 200_000_000
MAX_WAIT_NS = 5_000_000


@dataclass(frozen=True, slots=True)
class GpmMetric:
    field: str  # GpuSample attribute
    constant: str  # NVML_GPM_METRIC_* name
    scale: float  # multiply the NVML value by this to get base units


# NVML reports utilisations in percent (0..100) and PCIe rates in MiB/s. In the order of the
# GpuSample fields, so a reading (GpmReader.read_row) goes into a sample positionally.
GPM_METRICS: tuple[GpmMetric, ...] = (
    GpmMetric("gpm_gr_engine_active_ratio", "NVML_GPM_METRIC_GRAPHICS_UTIL", 0.01),
    GpmMetric("gpm_sm_util_ratio", "NVML_GPM_METRIC_SM_UTIL", 0.01),
    GpmMetric("gpm_sm_occupancy_ratio", "NVML_GPM_METRIC_SM_OCCUPANCY", 0.01),
    GpmMetric("gpm_dram_bw_util_ratio", "NVML_GPM_METRIC_DRAM_BW_UTIL", 0.01),
    GpmMetric("gpm_tensor_active_ratio", "NVML_GPM_METRIC_ANY_TENSOR_UTIL", 0.01),
    GpmMetric("gpm_pcie_tx_bytes_per_s", "NVML_GPM_METRIC_PCIE_TX_PER_SEC", float(MIB)),
    GpmMetric("gpm_pcie_rx_bytes_per_s", "NVML_GPM_METRIC_PCIE_RX_PER_SEC", float(MIB)),
)
NO_VALUES: tuple[None, ...] = (None,) * len(GPM_METRICS)  # a row without any metric


def gpm_supported(nvml: ModuleType, handle: Any) -> bool:
    """True when the device supports GPM; any NVML error (old driver, old GPU) means no."""
    try:
        return bool(nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
    except nvml.NVMLError:
        return False
    except AttributeError:  # an nvidia-ml-py too old to know GPM
        return False


@functools.cache
def _status_value_reader(request_type: type, n: int) -> tuple[Callable[..., tuple[Any, ...]], int]:
    """``(unpack_from, offset)`` reading ``(nvmlReturn, value)`` of the first ``n`` metric entries
    of a ``c_nvmlGpmMetricsGet_t`` from its bytes, laid out as ctypes lays the structure out.
    Made once per layout and shared by every GPU's reader (one object to keep in cache per tick)."""
    entry = dict(request_type._fields_)["metrics"]._type_  # c_nvmlGpmMetric_t
    status, value, size = entry.nvmlReturn, entry.value, ctypes.sizeof(entry)
    if status.size != 4 or value.size != 8 or value.offset < status.offset + 4:
        raise TypeError(f"unexpected layout of {entry.__name__}")
    one = f"I{value.offset - status.offset - 4}xd"
    gap = f"{size - value.offset - 8 + status.offset}x"
    fmt = "=" + gap.join([one] * n)
    return struct.Struct(fmt).unpack_from, request_type.metrics.offset + status.offset


@functools.cache
def _all_ok(ok: int, n: int) -> tuple[int, ...]:
    return (ok,) * n  # shared by every GPU's reader


@functools.cache
def _scales(wanted: tuple[GpmMetric, ...]) -> tuple[float, ...]:
    return tuple(m.scale for m in wanted)  # shared by every GPU's reader


class GpmReader:
    """Double-buffered GPM sampling of one device. Errors other than per-metric
    statuses (GpuIsLost, ...) propagate to the caller, which owns device health."""

    def __init__(
        self,
        nvml: ModuleType,
        handle: Any,
        *,
        min_spacing_ns: int = MIN_SPACING_NS,
        max_wait_ns: int = MAX_WAIT_NS,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.nvml = nvml
        self._clock_ns = clock_ns
        self._sleep = sleep
        self.max_wait_ns = max_wait_ns
        self.fresh = False  # whether the last read() took a new sample
        self.handle = handle
        self.min_spacing_ns = min_spacing_ns
        self.metrics = [m for m in GPM_METRICS if hasattr(nvml, m.constant)]
        self.unsupported: set[str] = set()
        self._buffers = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        self._prev = 0  # index of the buffer holding the latest sample
        self._prev_ns: int | None = None
        # the earliest time (clock_ns) the next sample may be taken; None before the first
        self.next_sample_ns: int | None = None
        self._row: tuple[float | None, ...] = NO_VALUES  # the last reading, in GPM_METRICS order
        self._req: list[Any] | None = None  # the two metrics requests, by the buffer of the newer sample
        self._wanted: list[GpmMetric] = []
        self._unpack: Callable[..., tuple[Any, ...]] | None = None  # statuses and values of the request
        self._offset = 0
        self._all_ok: tuple[int, ...] = ()
        self._complete = False  # every metric of GPM_METRICS is asked for, in that order
        self._scales: tuple[float, ...] = ()
        self._ok = nvml.NVML_SUCCESS
        self._not_supported = nvml.NVML_ERROR_NOT_SUPPORTED

    def read(self) -> dict[str, float]:
        """GPM metrics (base units) between the previous sample and now, by GpuSample field
        (a new dict on every call; absent metrics left out). See :meth:`read_row`."""
        return {m.field: v for m, v in zip(GPM_METRICS, self.read_row(), strict=True) if v is not None}

    def read_row(self) -> tuple[float | None, ...]:
        """GPM metrics (base units) between the previous sample and now, one value per entry
        of ``GPM_METRICS`` (None where a metric is absent).

        The first call only takes the first sample and returns no values. The time
        of a sample is taken after ``nvmlGpmSampleGet`` returns and compared with
        the time before the next one, so real spacing is never under the minimum.
        A read that comes less than ``max_wait_ns`` early (timer jitter at a 0.1 s
        interval) waits out the difference; one that comes earlier returns the
        previous values with ``fresh`` False.
        """
        if self._prev_ns is not None:
            early = self.min_spacing_ns - (self._clock_ns() - self._prev_ns)
            if early > self.max_wait_ns:
                self.fresh = False
                return self._row
            if early > 0:
                self._sleep(early / 1e9)
        self.fresh = True
        nxt = 1 - self._prev
        self.nvml.nvmlGpmSampleGet(self.handle, self._buffers[nxt])
        taken_ns = self._clock_ns()
        self.next_sample_ns = taken_ns + self.min_spacing_ns
        if self._prev_ns is None:
            self._prev, self._prev_ns = nxt, taken_ns
            return NO_VALUES
        req = self._request(nxt)  # from the other buffer's sample to this one's
        self._prev, self._prev_ns = nxt, taken_ns
        self.nvml.nvmlGpmMetricsGet(req)
        # every metric's nvmlReturn and value in one unpack of the request's bytes (no attribute access)
        raw = self._unpack(req, self._offset)
        statuses = raw[0::2]
        if self._complete and statuses == self._all_ok:
            row = tuple(map(operator.mul, raw[1::2], self._scales))
        else:
            row = self._checked(statuses, raw[1::2])
        self._row = row
        return row

    def _checked(self, statuses: tuple[int, ...], raw: tuple[float, ...]) -> tuple[float | None, ...]:
        """Values of the metrics that succeeded; NotSupported drops a metric for good."""
        got = {}
        for m, status, value in zip(self._wanted, statuses, raw, strict=True):
            if status == self._ok:
                got[m.field] = value * m.scale
            elif status == self._not_supported:
                self.unsupported.add(m.field)
                self._req = None  # rebuilt without it on the next read
                log.info("GPM metric %s is not supported on this device; not asked again", m.constant)
        return tuple(got.get(m.field) for m in GPM_METRICS)

    def _request(self, newer: int) -> Any:
        """The metrics request from the sample in the other buffer to the one in buffer ``newer``.
        The two requests (one per order of the buffers) are built once, and again only when
        a metric is dropped."""
        if self._req is None:
            self._wanted = [m for m in self.metrics if m.field not in self.unsupported]
            reqs = []
            for new in (0, 1):
                req = self.nvml.c_nvmlGpmMetricsGet_t()
                req.version = self.nvml.NVML_GPM_METRICS_GET_VERSION
                req.numMetrics = len(self._wanted)
                for i, m in enumerate(self._wanted):
                    req.metrics[i].metricId = getattr(self.nvml, m.constant)
                # pynvml's structures override attribute access (for printing); set the plain ctypes fields
                _set(req, "sample1", self._buffers[1 - new])
                _set(req, "sample2", self._buffers[new])
                reqs.append(req)
            self._unpack, self._offset = _status_value_reader(type(reqs[0]), len(self._wanted))
            self._all_ok = _all_ok(self._ok, len(self._wanted))
            self._complete = self._wanted == list(GPM_METRICS)
            self._scales = _scales(tuple(self._wanted))
            self._req = reqs
        return self._req[newer]

    def close(self) -> None:
        """Free both sample buffers (errors ignored: the device may be gone)."""
        for buf in self._buffers:
            try:
                self.nvml.nvmlGpmSampleFree(buf)
            except self.nvml.NVMLError:
                pass
        self._buffers = []
