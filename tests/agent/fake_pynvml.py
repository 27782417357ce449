"""A test double of the ``pynvml`` module (nvidia-ml-py) for machines without a GPU.

It is a real module object with the same function names and signatures as
``pynvml``, and it carries the real module's constants, ctypes structures and
exception classes (``NVMLError`` and its generated subclasses such as
``NVMLError_NotSupported`` or ``NVMLError_GpuIsLost``), so ``except
pynvml.NVMLError_NotSupported`` and ``pynvml.NVMLError(code)`` behave exactly as
with the real library. Only the calls into ``libnvidia-ml.so`` are replaced, by
scripted values and scripted failures held in :class:`FakeGpu`.

Install it with :func:`install` (tests: ``monkeypatch.setitem(sys.modules, "pynvml", fake.module)``).
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import pynvml as real

GIB = 1024**3


@dataclass(eq=False)
class FakeGpu:
    """Scripted state of one GPU, in NVML's own units (percent, KB/s, mW, mJ, MHz)."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: bytes = b"00000000:01:00.0"
    util_gpu: int = 87
    util_mem: int = 41
    mem_total: int = 80 * GIB
    mem_used: int = 30 * GIB
    pcie_tx_kbps: int = 1_500
    pcie_rx_kbps: int = 250_000
    power_mw: int = 312_500
    power_limit_mw: int = 700_000
    energy_mj: int = 5_000_000
    energy_step_mj: int = 31_250  # added per energy query
    temp_c: int = 61
    sm_clock_mhz: int = 1_755
    mem_clock_mhz: int = 2_619
    sm_max_mhz: int = 1_980
    mem_max_mhz: int = 2_619
    reasons: int = real.nvmlClocksEventReasonSwPowerCap | real.nvmlClocksEventReasonHwThermalSlowdown
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    process_util: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, smUtil %, timeStamp us)
    gpm_supported: bool = True
    # GPM metric id -> value (percent or MiB/s), and id -> per-metric nvmlReturn
    gpm_values: dict[int, float] = field(
        default_factory=lambda: {
            real.NVML_GPM_METRIC_GRAPHICS_UTIL: 90.0,
            real.NVML_GPM_METRIC_SM_UTIL: 80.0,
            real.NVML_GPM_METRIC_SM_OCCUPANCY: 45.0,
            real.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 60.0,
            real.NVML_GPM_METRIC_DRAM_BW_UTIL: 70.0,
            real.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 12.0,
            real.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 3.0,
        }
    )
    gpm_status: dict[int, int] = field(default_factory=dict)
    not_supported: set[str] = field(default_factory=set)  # function names that raise NotSupported
    lost: bool = False  # every call on this GPU raises GpuIsLost
    fail_next: dict[str, list[int]] = field(default_factory=dict)  # function name -> error codes, one per call


class FakeNvml:
    """The fake library: ``.module`` is what ``import pynvml`` returns in tests."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        library_missing: bool = False,
        driver_missing: bool = False,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.library_missing = library_missing
        self.driver_missing = driver_missing
        self.clock_ns = clock_ns
        self.init_errors: list[int] = []  # codes raised by successive nvmlInit calls
        self.initialised = False
        self._calls: Counter[str] = Counter()  # calls not (yet) tied to a GPU; see ``calls``
        self._gpu_calls: dict[int, Counter[str]] = {}  # GPU index -> calls per function; see ``calls_by_gpu``
        self.gpm_samples: dict[int, tuple[int, int]] = {}  # sample address -> (gpu index, t_ns)
        self.gpm_sample_log: list[tuple[int, int, int]] = []  # (gpu index, sample address, t_ns)
        self.gpm_metrics_log: list[tuple[int, int, int, int]] = []  # (gpu index, addr1, addr2, dt_ns)
        self.gpm_freed: list[int] = []
        self.gpm_requested: list[int] = []  # metric ids asked for, in order
        self._alloc: dict[int, Any] = {}  # keeps allocated opaque structs alive
        self._handles: dict[int, int] = {}  # handle address -> gpu index
        self._handle_ids: dict[int, int] = {}  # id() of a handle this fake gave out -> gpu index (fast path)
        self._handle_objs: list[Any] = []  # keeps every handle alive, so their id()s stay unique
        self._gpm_images: dict[tuple[Any, ...], bytes] = {}  # filled metric entries, by request and values
        self._last_index = -1  # the GPU the last device call was for
        self.module = self._build_module()

    # -- plumbing ----------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Calls per function name, all GPUs together (a fresh Counter on every read)."""
        out = Counter(self._calls)
        for counts in self._gpu_calls.values():
            out.update(counts)
        return out

    @property
    def calls_by_gpu(self) -> Counter[tuple[int, str]]:
        """Calls per (GPU index, function name) (a fresh Counter on every read)."""
        return Counter({(i, fn): n for i, counts in self._gpu_calls.items() for fn, n in counts.items()})

    @staticmethod
    def error(code: int) -> real.NVMLError:
        return real.NVMLError(code)  # maps to the right NVMLError_* subclass, as in pynvml

    def _enter(self, fn: str) -> None:
        self._calls[fn] += 1
        if not self.initialised:
            raise self.error(real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, fn: str, handle: Any) -> FakeGpu:
        index = self._handle_ids.get(id(handle))
        if index is None or not self.initialised:
            self._calls[fn] += 1
            if not self.initialised:
                raise self.error(real.NVML_ERROR_UNINITIALIZED)
            try:  # a handle built elsewhere that points at one of ours
                index = self._handles[ctypes.addressof(handle.contents)]
            except (KeyError, ValueError, AttributeError, TypeError):
                raise self.error(real.NVML_ERROR_INVALID_ARGUMENT) from None
            self._calls[fn] -= 1  # counted per GPU below
        counts = self._gpu_calls.get(index)
        if counts is None:
            counts = self._gpu_calls[index] = Counter()
        counts[fn] += 1
        self._last_index = index
        gpu = self.gpus[index]
        if gpu.lost or gpu.fail_next or gpu.not_supported:  # anything scripted for this GPU
            if gpu.lost:
                raise self.error(real.NVML_ERROR_GPU_IS_LOST)
            queued = gpu.fail_next.get(fn)
            if queued:
                raise self.error(queued.pop(0))
            if fn in gpu.not_supported:
                raise self.error(real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _build_module(self) -> types.ModuleType:
        mod = types.ModuleType("pynvml", "Test double of pynvml (nvidia-ml-py).")
        for name in dir(real):
            value = getattr(real, name)
            if name.startswith("__") or isinstance(value, types.FunctionType | types.ModuleType):
                continue
            setattr(mod, name, value)  # constants, ctypes structures, NVMLError and its subclasses
        mod.nvmlStructToFriendlyObject = real.nvmlStructToFriendlyObject
        for name in _FUNCTIONS:
            setattr(mod, name, getattr(self, name))
        mod.__fake__ = self
        return mod

    # -- library -------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._calls["nvmlInit"] += 1
        if self.library_missing:
            raise self.error(real.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.driver_missing:
            raise self.error(real.NVML_ERROR_DRIVER_NOT_LOADED)
        if self.init_errors:
            raise self.error(self.init_errors.pop(0))
        self.initialised = True

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised = False
        self._handles.clear()
        self._handle_ids.clear()

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return "580.65.06"

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise self.error(real.NVML_ERROR_GPU_IS_LOST)
        handle = ctypes.pointer(real.struct_c_nvmlDevice_t())  # a real c_nvmlDevice_t
        self._handle_objs.append(handle)
        self._handles[ctypes.addressof(handle.contents)] = index
        self._handle_ids[id(handle)] = index
        return handle

    # -- device queries --------------------------------------------------------------
    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu = self._gpu("nvmlDeviceGetPciInfo", handle)
        info = real.nvmlPciInfo_t()
        info.busId = gpu.bus_id
        return info

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return _fresh_struct(real.c_nvmlUtilization_t, gpu=gpu.util_gpu, memory=gpu.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        return _fresh_struct(
            real.c_nvmlMemory_t, total=gpu.mem_total, free=gpu.mem_total - gpu.mem_used, used=gpu.mem_used
        )

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        gpu = self._gpu("nvmlDeviceGetPcieThroughput", device)
        if counter == real.NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kbps
        if counter == real.NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kbps
        raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        gpu.energy_mj += gpu.energy_step_mj
        return gpu.energy_mj

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != real.NVML_TEMPERATURE_GPU:
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temp_c

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:  # noqa: A002 - pynvml's parameter name
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type == real.NVML_CLOCK_SM:
            return gpu.sm_clock_mhz
        if type == real.NVML_CLOCK_MEM:
            return gpu.mem_clock_mhz
        raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, type: int) -> int:  # noqa: A002
        gpu = self._gpu("nvmlDeviceGetMaxClockInfo", handle)
        return {real.NVML_CLOCK_SM: gpu.sm_max_mhz, real.NVML_CLOCK_MEM: gpu.mem_max_mhz}[type]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).reasons

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        out = []
        for pid, used in gpu.processes:
            info = real.c_nvmlProcessInfo_v3_t(pid=pid, usedGpuMemory=real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value)
            if used is not None:
                info.usedGpuMemory = used
            obj = real.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                obj.usedGpuMemory = None  # as pynvml does
            out.append(obj)
        return out

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Any]:  # noqa: N803
        gpu = self._gpu("nvmlDeviceGetProcessUtilization", handle)
        newer = [p for p in gpu.process_util if p[2] > timeStamp]
        if not newer:
            raise self.error(real.NVML_ERROR_NOT_FOUND)  # what NVML returns when no sample is newer
        return [real.c_nvmlProcessUtilizationSample_t(pid=p, timeStamp=ts, smUtil=sm) for p, sm, ts in newer]

    # -- GPM -------------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        gpu = self._gpu("nvmlGpmQueryDeviceSupport", device)
        support = real.c_nvmlGpmSupport_t()
        support.version = real.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.gpm_supported else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._enter("nvmlGpmSampleAlloc")
        sample = ctypes.pointer(real.struct_c_nvmlGpmSample_t())  # a real c_nvmlGpmSample_t
        self._alloc[ctypes.addressof(sample.contents)] = sample
        return sample

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:  # noqa: N803
        self._enter("nvmlGpmSampleFree")
        addr = ctypes.addressof(gpmSample.contents)
        if self._alloc.pop(addr, None) is None:
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        self.gpm_freed.append(addr)

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:  # noqa: N803
        gpu = self._gpu("nvmlGpmSampleGet", device)
        if not gpu.gpm_supported:
            raise self.error(real.NVML_ERROR_NOT_SUPPORTED)
        addr = ctypes.addressof(gpmSample.contents)
        if addr not in self._alloc:
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        t = self.clock_ns()
        index = self._last_index  # set by _gpu
        self.gpm_samples[addr] = (index, t)
        self.gpm_sample_log.append((index, addr, t))
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:  # noqa: N803
        self._enter("nvmlGpmMetricsGet")
        get = object.__getattribute__  # plain ctypes access, as the C library reads and writes the request
        if get(metricsGet, "version") != real.NVML_GPM_METRICS_GET_VERSION:
            raise self.error(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        try:
            a1 = ctypes.addressof(get(metricsGet, "sample1").contents)
            a2 = ctypes.addressof(get(metricsGet, "sample2").contents)
        except ValueError:  # NULL sample pointer
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT) from None
        if a1 == a2 or a1 not in self.gpm_samples or a2 not in self.gpm_samples:
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        (i1, t1), (i2, t2) = self.gpm_samples[a1], self.gpm_samples[a2]
        if i1 != i2 or t2 <= t1:
            raise self.error(real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[i1]
        if gpu.lost:
            raise self.error(real.NVML_ERROR_GPU_IS_LOST)
        self.gpm_metrics_log.append((i1, a1, a2, t2 - t1))
        n = get(metricsGet, "numMetrics")
        layout = _GPM_LAYOUTS.get(n) or _gpm_layout(n)
        base = ctypes.addressof(metricsGet) + _GPM_METRICS_OFFSET
        ids = layout.unpack_from(metricsGet, _GPM_METRICS_OFFSET)[0::4]  # every entry's metricId
        self.gpm_requested.extend(ids)
        values, ok = gpu.gpm_values, real.NVML_SUCCESS
        statuses = tuple(map(gpu.gpm_status.get, ids, repeat(ok)))
        key = (n, ids, statuses, tuple(map(values.get, ids)))
        image = self._gpm_images.get(key)
        if image is None:  # entries as NVML fills them: the metric's status, its value when it succeeded
            fill = []
            for metric_id, status in zip(ids, statuses, strict=True):
                if status == ok and metric_id not in values:
                    status = real.NVML_ERROR_NOT_SUPPORTED
                fill += (metric_id, status, values[metric_id] if status == ok else 0.0, b"")
            image = self._gpm_images[key] = layout.pack(*fill)
        ctypes.memmove(base, image, len(image))
        return metricsGet


_GPM_METRIC = real.c_nvmlGpmMetric_t
_GPM_METRICS_OFFSET = real.c_nvmlGpmMetricsGet_t.metrics.offset
_GPM_LAYOUTS: dict[int, struct.Struct] = {}


def _gpm_layout(n: int) -> struct.Struct:
    """``n`` metric entries as (metricId, nvmlReturn, value, metricInfo bytes as one zero pad)."""
    layout = _GPM_LAYOUTS.get(n)
    if layout is None:
        info = _GPM_METRIC.metricInfo
        assert (_GPM_METRIC.metricId.offset, _GPM_METRIC.nvmlReturn.offset, _GPM_METRIC.value.offset) == (0, 4, 8)
        assert info.offset == 16 and ctypes.sizeof(_GPM_METRIC) == 16 + info.size
        layout = _GPM_LAYOUTS[n] = struct.Struct("=" + f"IId{info.size}s" * n)
    return layout


_STRUCT_IMAGES: dict[tuple[Any, ...], bytes] = {}


def _fresh_struct(cls: type, **values: Any) -> Any:
    """A new ``cls`` structure holding ``values``, as the library returns one per call:
    copied in C from a cached image of the same values instead of set field by field
    through pynvml's Python attribute hooks."""
    key = (cls, *values.values())  # one call site per class: the names come in the same order
    image = _STRUCT_IMAGES.get(key)
    if image is None:
        image = _STRUCT_IMAGES[key] = bytes(cls(**values))
    return cls.from_buffer_copy(image)


_FUNCTIONS = tuple(
    name for name, value in vars(FakeNvml).items() if name.startswith("nvml") and callable(value) and name != "error"
)


def install(fake: FakeNvml) -> types.ModuleType:
    """Make ``import pynvml`` return the fake (outside pytest; tests use monkeypatch)."""
    sys.modules["pynvml"] = fake.module
    return fake.module


def h100s(n: int) -> list[FakeGpu]:
    """``n`` distinct fake H100s."""
    return [
        FakeGpu(uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000", bus_id=f"00000000:{i + 1:02X}:00.0".encode())
        for i in range(n)
    ]
