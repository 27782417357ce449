"""GPU source over NVML (the ``pynvml`` module of the ``nvidia-ml-py`` distribution).

Every field is queried on its own, so one unsupported query never hides the
others:

* ``NotSupported`` (or ``FunctionNotFound``, ``NoPermission``) makes the field
  absent (``None``, never zero) and it is not asked again on that device;
* ``GpuIsLost`` or ``Unknown`` marks the device lost; NVML is then shut down and
  re-initialised with exponential backoff until the device answers again;
* no NVML library, no driver, or no ``pynvml`` module puts the agent in host-only
  mode, said once in the log;
* any other NVML error leaves the field absent for that tick only.

Utilisation, memory, PCIe, power, energy, clocks, clock-event reasons and GPM
are read every tick; temperature, power limit and the watched process's GPU
memory and utilisation once a second (``slow_interval_s``), carried over in
between and listed in ``GpuSample.stale`` (null in bundle rows, shown on /metrics).

Nothing here raises to the caller: the agent never dies on an NVML error.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from types import ModuleType
from typing import Any

from bottleneck_map.agent.gpm import (
    DEFAULT_SPACING_NS,
    GPM_METRICS,
    MIN_SPACING_NS,
    NO_VALUES,
    GpmReader,
    gpm_supported,
)
from bottleneck_map.agent.sample import GpuSample, Sample

log = logging.getLogger("bottleneck_map.agent")

_get = object.__getattribute__
KB = 1000  # nvmlDeviceGetPcieThroughput reports KB/s (1 KB = 1000 bytes per NVML docs)
MHZ = 1_000_000
SLOW_INTERVAL_S = 1.0
# read once per SLOW_INTERVAL_S and carried over in between (listed in GpuSample.stale)
SLOW_GPU_FIELDS = frozenset({"temperature_c", "power_limit_w", "proc_gpu_mem_bytes", "proc_gpu_util_ratio"})
GPM_FIELDS = frozenset(m.field for m in GPM_METRICS)
# GpuSample.stale by (slow fields carried over, GPM values carried over)
_STALE = {
    (False, False): frozenset(),
    (True, False): SLOW_GPU_FIELDS,
    (False, True): GPM_FIELDS,
    (True, True): SLOW_GPU_FIELDS | GPM_FIELDS,
}
_NO_SLOW = (None, None, None, None)
# A per-tick query whose calls all take longer than this at start-up (wall time, the fastest of
# PROBE_CALLS) is read once a second instead: NVML documents nvmlDeviceGetPcieThroughput as
# "querying a byte counter over a 20 ms interval", and 16 such calls would not fit a 100 ms tick
# on an 8-GPU node. None turns the probe off.
BLOCKING_QUERY_S: float | None = 0.005
PROBE_CALLS = 3  # the fastest of three: a call preempted once on a busy host does not count
# the GpuSample field of each per-tick scalar query (keys of NvmlSource._plan)
_PLAN_FIELDS = {
    "pcie_tx": "pcie_tx_bytes_per_s",
    "pcie_rx": "pcie_rx_bytes_per_s",
    "power": "power_w",
    "energy": "energy_j",
    "sm_clock": "sm_clock_hz",
    "mem_clock": "mem_clock_hz",
}
_GPM = attrgetter("gpm")
_NEXT_SAMPLE_NS = attrgetter("next_sample_ns")  # temperature, power limit, watched process's memory and utilisation


def fields_reader(struct_type: type, names: tuple[str, ...]) -> Callable[[Any], tuple[int, ...]]:
    """A function reading the integer fields ``names`` (in order of their offsets) of a ctypes
    structure of ``struct_type`` from its bytes in one ``struct.unpack_from``: the numbers the
    structure's fields hold, without an attribute access (pynvml's structures hook those) each."""
    fmt, pos = "=", 0
    for name in names:
        desc = getattr(struct_type, name)
        ctype = dict(struct_type._fields_)[name]
        code = getattr(ctype, "_type_", None)
        if not isinstance(code, str) or code not in "bBhHiIlLqQ" or desc.offset < pos:
            raise TypeError(f"{struct_type.__name__}.{name} is not an integer field after the previous one")
        size = ctypes.sizeof(ctype)
        fmt += f"{desc.offset - pos}x" + {1: "b", 2: "h", 4: "i", 8: "q"}[size]
        if code.isupper():  # unsigned
            fmt = fmt[:-1] + fmt[-1].upper()
        pos = desc.offset + size
    return struct.Struct(fmt).unpack_from


_UTIL_FIELDS = ("gpu", "memory")  # nvmlDeviceGetUtilizationRates, percent
_MEMORY_FIELDS = ("total", "free", "used")  # nvmlDeviceGetMemoryInfo, bytes
_READERS: dict[type, Callable[[Any], tuple[int, ...]]] = {}


def _reader(struct_type: type, names: tuple[str, ...]) -> Callable[[Any], tuple[int, ...]]:
    """:func:`fields_reader` of a result type, made once per type; attribute reads past
    pynvml's hooks where the fields are not plain integers at fixed offsets."""
    try:
        read = fields_reader(struct_type, names)
    except (TypeError, AttributeError, KeyError):
        read = lambda obj: tuple(_get(obj, name) for name in names)  # noqa: E731
    _READERS[struct_type] = read
    return read


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_pynvml() -> ModuleType | None:
    """Import ``pynvml``; ``None`` when the distribution is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class _DeviceLost(Exception):
    """Raised inside sampling when a query says the device is gone."""


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    unsupported: set[str] = field(default_factory=set)
    max_clocks: tuple[float | None, float | None] = (None, None)  # SM and memory, Hz: read once
    gpm: GpmReader | None = None
    proc_util_ts_us: int = 0
    # temperature_c, power_limit_w, proc_gpu_mem_bytes, proc_gpu_util_ratio, as last read
    slow: tuple[float | None, ...] = _NO_SLOW
    slow_due: float = float("-inf")
    # the per-tick scalar queries still asked: (position in the tick's scalars, key, function,
    # argument or None, scale); the scalars are PCIe TX, RX, power, energy, SM clock, memory clock
    plan: tuple[tuple[int, str, Callable[..., Any], Any, float], ...] = ()
    # per-tick queries found blocking at start-up (read once a second): (position, value) as last read
    slow_scalars: tuple[tuple[int, float | None], ...] = ()


@dataclass
class NvmlStatus:
    """What the GPU source is doing, for logs, meta.json and the agent's own metrics."""

    available: bool = False
    host_only_reason: str | None = None
    device_count: int = 0
    lost: bool = False
    reinit_attempts: int = 0
    recoveries: int = 0
    driver_version: str | None = None
    # per-tick queries that blocked at start-up and are read once a second instead (plan keys)
    blocking_queries: list[str] = field(default_factory=list)


class NvmlSource:
    """Samples every GPU NVML sees. ``nvml`` defaults to the imported ``pynvml``;
    tests pass a test double with the same functions and exception classes."""

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        *,
        watch_pid: int | None = None,
        gpm: bool = True,
        gpm_interval_s: float = DEFAULT_SPACING_NS / 1e9,
        slow_interval_s: float = SLOW_INTERVAL_S,
        blocking_query_s: float | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self.watch_pid = watch_pid
        self.use_gpm = gpm
        if not gpm_interval_s * 1e9 >= MIN_SPACING_NS:
            raise ValueError(f"gpm_interval_s must be at least {MIN_SPACING_NS / 1e9:g} s, got {gpm_interval_s}")
        self.gpm_spacing_ns = int(round(gpm_interval_s * 1e9))
        self.slow_interval_s = slow_interval_s
        # None: the module's BLOCKING_QUERY_S (itself None: no probe)
        self.blocking_query_s = BLOCKING_QUERY_S if blocking_query_s is None else blocking_query_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self.status = NvmlStatus()
        self.devices: list[_Device] = []
        self._host_only = False
        self._initialised = False
        self._next_retry = 0.0
        self._backoff = backoff_initial_s
        self._lost_indices: set[int] = set()
        self._reported: set[tuple[int, str]] = set()  # (GPU, field or error) already logged
        self._plan_of: ModuleType | None = None  # the module the shared plan was made from
        self._shared_plan: tuple[tuple[int, str, Callable[..., Any], Any, float], ...] = ()
        # per-tick queries moved to the once-a-second reads, and the stale sets that name them
        self._slow_plan: tuple[tuple[int, str, Callable[..., Any], Any, float], ...] = ()
        self._stale = _STALE

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> bool:
        """Initialise NVML and enumerate devices; False when running host-only."""
        if self._nvml is None:
            self._nvml = load_pynvml()
            if self._nvml is None:
                self._go_host_only("the pynvml module (nvidia-ml-py) is not installed")
                return False
        return self._init()

    def close(self) -> None:
        self._drop_devices()
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._initialised = False

    def _go_host_only(self, reason: str) -> None:
        if not self._host_only:
            log.warning("NVML unavailable (%s): the agent samples the host only", reason)
        self._host_only = True
        self.status.available = False
        self.status.host_only_reason = reason

    def _permanent_init_errors(self) -> tuple[type[BaseException], ...]:
        n = self._nvml
        names = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_FunctionNotFound")
        return tuple(getattr(n, c) for c in names if hasattr(n, c))

    def _init(self) -> bool:
        n = self._nvml
        try:
            n.nvmlInit()
        except self._permanent_init_errors() as exc:
            self._go_host_only(f"nvmlInit: {exc}")
            return False
        except n.NVMLError as exc:
            log.warning("nvmlInit failed (%s); retrying in %.1f s", exc, self._backoff)
            self._schedule_retry()
            self.status.lost = True
            return False
        except OSError as exc:  # a broken libnvidia-ml.so
            self._go_host_only(f"nvmlInit: {exc}")
            return False
        self._initialised = True
        try:
            self.status.driver_version = _text(n.nvmlSystemGetDriverVersion())
        except n.NVMLError:
            self.status.driver_version = None
        try:
            count = n.nvmlDeviceGetCount()
        except n.NVMLError as exc:
            log.warning("nvmlDeviceGetCount failed (%s); retrying in %.1f s", exc, self._backoff)
            self._schedule_retry()
            self.status.lost = True
            return False
        devices, lost = [], set()
        self._plan_of = None  # the per-tick plan is made afresh for each initialisation
        self._slow_plan, self._stale = (), _STALE
        for i in range(count):
            try:
                devices.append(self._open_device(i))
            except (_DeviceLost, n.NVMLError) as exc:
                log.warning("GPU %d could not be opened (%s)", i, exc)
                lost.add(i)
        self._find_blocking_queries(devices)
        self.devices = devices
        self._lost_indices = lost
        self.status.available = True
        self.status.device_count = count
        self.status.lost = bool(lost)
        if lost:
            self._schedule_retry()
        else:
            self._backoff = self.backoff_initial_s
        return True

    def _open_device(self, index: int) -> _Device:
        n = self._nvml
        dev = _Device(index=index, handle=n.nvmlDeviceGetHandleByIndex(index))
        dev.uuid = self._query(dev, "uuid", _text_of(n.nvmlDeviceGetUUID))
        dev.name = self._query(dev, "name", _text_of(n.nvmlDeviceGetName))
        dev.pci_bus_id = self._query(dev, "pci", lambda h: _text(n.nvmlDeviceGetPciInfo(h).busId))
        dev.max_clocks = (
            self._scaled(dev, "sm_max", n.nvmlDeviceGetMaxClockInfo, MHZ, n.NVML_CLOCK_SM),
            self._scaled(dev, "mem_max", n.nvmlDeviceGetMaxClockInfo, MHZ, n.NVML_CLOCK_MEM),
        )
        dev.plan = self._plan(n)  # one tuple shared by every GPU until one of them drops a query
        if self.use_gpm and gpm_supported(n, dev.handle):
            try:
                dev.gpm = GpmReader(n, dev.handle, min_spacing_ns=self.gpm_spacing_ns)
            except n.NVMLError as exc:
                log.info("GPU %d: GPM sample buffers unavailable (%s)", index, exc)
        return dev

    def _plan(self, n: ModuleType) -> tuple[tuple[int, str, Callable[..., Any], Any, float], ...]:
        """The per-tick scalar queries, made once per NVML initialisation and shared by the GPUs."""
        if self._plan_of is not n:
            self._plan_of = n
            # scales as floats: an int reading times a float scale is float(reading) * scale, in one step
            self._shared_plan = (
                (0, "pcie_tx", n.nvmlDeviceGetPcieThroughput, n.NVML_PCIE_UTIL_TX_BYTES, float(KB)),
                (1, "pcie_rx", n.nvmlDeviceGetPcieThroughput, n.NVML_PCIE_UTIL_RX_BYTES, float(KB)),
                (2, "power", n.nvmlDeviceGetPowerUsage, None, 1e-3),
                (3, "energy", n.nvmlDeviceGetTotalEnergyConsumption, None, 1e-3),
                (4, "sm_clock", n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM, float(MHZ)),
                (5, "mem_clock", n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_MEM, float(MHZ)),
            )
        return self._shared_plan

    def _find_blocking_queries(self, devices: list[_Device]) -> None:
        """Call each per-tick query ``PROBE_CALLS`` times on the first GPU, timed (wall clock);
        those whose fastest call takes longer than ``blocking_query_s`` leave the per-tick plan
        of every GPU and are read once a second (listed in ``stale`` in between, like the other
        once-a-second fields). At initialisation only: nothing is timed during ticks."""
        if not devices or not self.blocking_query_s:
            return
        first = devices[0]
        blocking = []
        for q in first.plan:
            _, key, fn, arg, _ = q
            fastest = float("inf")
            try:
                for _ in range(PROBE_CALLS):
                    t = time.perf_counter_ns()
                    fn(first.handle) if arg is None else fn(first.handle, arg)
                    fastest = min(fastest, (time.perf_counter_ns() - t) / 1e9)
            except Exception:  # noqa: BLE001 - the ticks handle and report query errors
                continue
            if fastest > self.blocking_query_s:
                blocking.append(q)
                log.warning(
                    "%s took %.1f ms on GPU %d; reading %s once a second instead of every tick",
                    getattr(fn, "__name__", key),
                    fastest * 1e3,
                    first.index,
                    _PLAN_FIELDS[key],
                )
        if not blocking:
            return
        keys = {q[1] for q in blocking}
        self._slow_plan = tuple(blocking)
        self.status.blocking_queries = sorted(keys, key=list(_PLAN_FIELDS).index)
        moved = frozenset(_PLAN_FIELDS[k] for k in keys)
        self._stale = {(slow, gpm): st | moved if slow else st for (slow, gpm), st in _STALE.items()}
        for dev in devices:
            dev.plan = tuple(q for q in dev.plan if q[1] not in keys)

    def _drop_devices(self) -> None:
        for dev in self.devices:
            if dev.gpm is not None:
                dev.gpm.close()
        self.devices = []

    def _schedule_retry(self) -> None:
        self._next_retry = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max_s)

    def _maybe_reinit(self) -> None:
        if self._clock() < self._next_retry:
            return
        self.status.reinit_attempts += 1
        self._lost_indices |= {d.index for d in self.devices}
        self._drop_devices()
        if self._initialised:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._initialised = False
        if self._init() and not self.status.lost:
            self.status.recoveries += 1
            log.warning("NVML re-initialised: %d GPU(s) answering again", len(self.devices))

    # -- one field ----------------------------------------------------------
    def _unsupported_errors(self) -> tuple[type[BaseException], ...]:
        n = self._nvml
        names = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
        return tuple(getattr(n, c) for c in names if hasattr(n, c))

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        n = self._nvml
        return tuple(getattr(n, c) for c in ("NVMLError_GpuIsLost", "NVMLError_Unknown") if hasattr(n, c))

    def _query(self, dev: _Device, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML query: None when unsupported (remembered) or failing this tick."""
        if key in dev.unsupported:
            return None
        try:
            return fn(dev.handle, *args)
        except Exception as exc:
            self._failed(dev, key, exc)
            return None

    def _failed(self, dev: _Device, key: str, exc: Exception) -> None:
        """Handle a failed query of ``key``: remember NotSupported (the field is not asked
        again), raise ``_DeviceLost`` for a lost device, drop the field this tick otherwise."""
        if isinstance(exc, self._unsupported_errors()):
            dev.unsupported.add(key)
            dev.plan = tuple(q for q in dev.plan if q[1] != key)
            log.info("GPU %d: %s is not supported; not asked again", dev.index, key)
        elif isinstance(exc, self._lost_errors()):
            raise _DeviceLost(f"GPU {dev.index}: {key}: {exc}") from exc
        elif isinstance(exc, self._nvml.NVMLError):
            log.debug("GPU %d: %s failed this tick (%s)", dev.index, key, exc)
        elif (dev.index, key) not in self._reported:  # not an NVML error (a binding bug): logged once
            self._reported.add((dev.index, key))
            log.error("GPU %d: %s raised %s; not logged again", dev.index, key, type(exc).__name__, exc_info=exc)

    def _scaled(self, dev: _Device, key: str, fn: Callable[..., Any], scale: float, *args: Any) -> float | None:
        value = self._query(dev, key, fn, *args)
        return None if value is None else float(value) * scale

    # -- one tick -----------------------------------------------------------
    def not_before_ns(self) -> int | None:
        """The earliest time (monotonic ns) the next tick can take a fresh GPM sample on the
        first GPM device (the others follow in the same order); None without GPM. The sampler
        starts a tick that would come a few ms earlier at this time instead, so GPM reads do
        not each wait inside the tick."""
        return min(filter(None, map(_NEXT_SAMPLE_NS, filter(None, map(_GPM, self.devices)))), default=None)

    def collect(self, sample: Sample) -> None:
        """Append this tick's GPU readings to ``sample.gpus``."""
        sample.gpus.extend(self.sample(sample.ts_ns))

    def sample(self, now_ns: int) -> list[GpuSample]:
        """One reading per known GPU; lost GPUs come back with ``lost=True`` and no fields."""
        if self._host_only or self._nvml is None:
            return []
        if self.status.lost:
            self._maybe_reinit()
        out: list[GpuSample] = []
        newly_lost = False
        now = self._clock()  # one clock read per tick for the once-a-second fields
        for dev in list(self.devices):
            try:
                out.append(self._sample_device(dev, now))
            except _DeviceLost as exc:
                log.warning("%s; marking the device lost and re-initialising NVML with backoff", exc)
                self.devices.remove(dev)
                if dev.gpm is not None:
                    dev.gpm.close()
                self._lost_indices.add(dev.index)
                newly_lost = True
            except Exception as exc:  # a bug or a double misbehaving: never kill the agent
                key = (dev.index, type(exc).__name__)
                if key not in self._reported:
                    self._reported.add(key)
                    log.exception("GPU %d: sampling failed (%s); not logged again", dev.index, exc)
        if newly_lost:
            self.status.lost = True
            self._backoff = self.backoff_initial_s
            self._schedule_retry()
        if self._lost_indices:
            out.extend(GpuSample(index=i, lost=True) for i in sorted(self._lost_indices))
            out.sort(key=lambda g: g.index)
        return out

    def _sample_device(self, dev: _Device, now: float) -> GpuSample:
        """One GPU's reading, built in one GpuSample call from locals (no attribute set per field)."""
        n = self._nvml
        h = dev.handle
        unsupported = dev.unsupported
        gpu_util = mem_util = used = free = total = reasons = None
        if "utilization" not in unsupported:  # each query on its own, as _query does, without its call
            try:
                util = n.nvmlDeviceGetUtilizationRates(h)
            except Exception as exc:
                self._failed(dev, "utilization", exc)
            else:  # numeric ctypes fields, read from the structure's bytes past pynvml's attribute hooks
                t = type(util)
                gpu, memory = (_READERS.get(t) or _reader(t, _UTIL_FIELDS))(util)
                gpu_util = gpu / 100.0
                mem_util = memory / 100.0
        if "memory" not in unsupported:
            try:
                mem = n.nvmlDeviceGetMemoryInfo(h)
            except Exception as exc:
                self._failed(dev, "memory", exc)
            else:
                t = type(mem)
                total, free, used = (_READERS.get(t) or _reader(t, _MEMORY_FIELDS))(mem)
                total, free, used = float(total), float(free), float(used)
        scalars: list[float | None] = [None, None, None, None, None, None]
        for i, key, fn, arg, scale in dev.plan:
            try:
                value = fn(h) if arg is None else fn(h, arg)
            except Exception as exc:
                self._failed(dev, key, exc)
                continue
            if value is not None:
                scalars[i] = value * scale
        if "clock_events" not in unsupported:
            try:
                value = n.nvmlDeviceGetCurrentClocksEventReasons(h)
            except Exception as exc:
                self._failed(dev, "clock_events", exc)
            else:
                reasons = None if value is None else int(value)
        slow_stale = now < dev.slow_due
        if not slow_stale:
            dev.slow_due = now + self.slow_interval_s
            dev.slow = self._sample_slow(dev)
            if self._slow_plan:
                dev.slow_scalars = self._sample_slow_scalars(dev)
        for i, value in dev.slow_scalars:  # empty unless a per-tick query blocked at start-up
            scalars[i] = value
        gpm, gpm_stale = (NO_VALUES, False) if dev.gpm is None else self._sample_gpm(dev)
        tx, rx, power, energy, sm_clock, mem_clock = scalars
        temperature, power_limit, proc_mem, proc_util = dev.slow
        sm_max, mem_max = dev.max_clocks
        # positional, in the order of GpuSample's fields
        return GpuSample(
            dev.index,
            dev.uuid,
            dev.name,
            dev.pci_bus_id,
            False,
            gpu_util,
            mem_util,
            used,
            free,
            total,
            tx,
            rx,
            power,
            power_limit,
            energy,
            temperature,
            sm_clock,
            sm_max,
            mem_clock,
            mem_max,
            reasons,
            *gpm,
            proc_mem,
            proc_util,
            self._stale[slow_stale, gpm_stale],
        )

    def _sample_slow(self, dev: _Device) -> tuple[float | None, ...]:
        """Fields that change slowly or cost more, read every ``slow_interval_s``: temperature,
        power limit, and the watched process's GPU memory and SM utilisation."""
        n = self._nvml
        temperature = self._scaled(dev, "temperature", n.nvmlDeviceGetTemperature, 1.0, n.NVML_TEMPERATURE_GPU)
        power_limit = self._scaled(dev, "power_limit", n.nvmlDeviceGetEnforcedPowerLimit, 1e-3)
        if self.watch_pid is None:
            return temperature, power_limit, None, None
        return temperature, power_limit, *self._sample_process(dev)

    def _sample_slow_scalars(self, dev: _Device) -> tuple[tuple[int, float | None], ...]:
        """The per-tick queries moved to once a second, as (position in the tick's scalars, value)."""
        out = []
        for i, key, fn, arg, scale in self._slow_plan:
            value = self._query(dev, key, fn) if arg is None else self._query(dev, key, fn, arg)
            out.append((i, None if value is None else value * scale))
        return tuple(out)

    def _sample_process(self, dev: _Device) -> tuple[float | None, float | None]:
        """GPU memory of the watched pid, and its mean SM utilisation since the last call."""
        n = self._nvml
        mem = None
        procs = self._query(dev, "processes", n.nvmlDeviceGetComputeRunningProcesses)
        for p in procs or ():
            if p.pid == self.watch_pid and p.usedGpuMemory is not None:
                mem = float(p.usedGpuMemory)
        if "process_utilization" in dev.unsupported:
            return mem, None
        try:
            samples = n.nvmlDeviceGetProcessUtilization(dev.handle, dev.proc_util_ts_us)
        except getattr(n, "NVMLError_NotFound", ()):
            return mem, None  # no new utilisation samples since the last call
        except self._unsupported_errors():
            dev.unsupported.add("process_utilization")
            log.info("GPU %d: process_utilization is not supported; not asked again", dev.index)
            return mem, None
        except self._lost_errors() as exc:
            raise _DeviceLost(f"GPU {dev.index}: process_utilization: {exc}") from exc
        except n.NVMLError:
            return mem, None
        if samples:
            dev.proc_util_ts_us = max(s.timeStamp for s in samples)
        mine = [s.smUtil for s in samples if s.pid == self.watch_pid]
        return mem, (sum(mine) / len(mine) / 100.0 if mine else None)

    def _sample_gpm(self, dev: _Device) -> tuple[tuple[float | None, ...], bool]:
        """The GPM metrics (in GPM_METRICS order) and whether they are carried over from an earlier read."""
        try:
            values = dev.gpm.read_row()
        except self._lost_errors() as exc:
            raise _DeviceLost(f"GPU {dev.index}: GPM: {exc}") from exc
        except self._nvml.NVMLError as exc:
            if isinstance(exc, self._unsupported_errors()):
                log.info("GPU %d: GPM is not supported; not asked again", dev.index)
                dev.gpm.close()
                dev.gpm = None
            return NO_VALUES, False
        return values, not dev.gpm.fresh


def _text_of(fn: Callable[[Any], Any]) -> Callable[[Any], str]:
    return lambda handle: _text(fn(handle))
