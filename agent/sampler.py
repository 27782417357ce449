"""The sampling loop: a fixed, drift-free interval on its own thread.

Tick ``k`` is due at ``t0 + k * interval`` on the monotonic clock, so the time a
tick takes never shifts the ones after it; a tick that overruns skips the grid
points it missed (counted in ``stats.missed_ticks``) instead of bunching up.
Each tick asks every source to fill one :class:`Sample`, keeps it in a bounded
ring buffer (memory does not grow with run length) and, when a bundle writer is
given, appends its rows to the bundle's ``samples`` table: column-wise, once
every ``write_every_s`` (1 s) for the ticks since the last hand-over, so no
tick builds row dicts, and the rest at ``stop()``. With ``flush_writes`` (the
standalone agent, which owns its writer) each hand-over also writes the
segment, on the sampler thread right after the tick, so no other thread wakes
up for the bundle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bottleneck_map.agent.host import HostSource
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sample import Sample, to_columns
from bottleneck_map.bundle import BundleWriter, now_ns

log = logging.getLogger("bottleneck_map.agent")

DEFAULT_INTERVAL_S = 0.1
DEFAULT_BUFFER = 3000  # five minutes at 10 Hz
MAX_TICK_DELAY_S = 0.005  # a tick may start this much after its grid point for a source (GPM spacing)
WRITE_EVERY_S = 1.0  # samples are handed to the bundle writer in batches this far apart
ERROR_LOG_EVERY_S = 60.0


class Source(Protocol):
    """Anything that fills part of a sample: ``HostSource``, ``NvmlSource``, a test source."""

    name: str

    def start(self) -> bool: ...

    def collect(self, sample: Sample) -> None: ...

    def close(self) -> None: ...


@dataclass
class SamplerStats:
    ticks: int = 0
    missed_ticks: int = 0
    source_errors: int = 0
    rows_written: int = 0
    last_duration_ns: int | None = None


def default_sources(watch_pid: int | None = None, *, gpm_interval_s: float | None = None) -> list[Source]:
    """The host and every GPU NVML sees (GPM samples ``gpm_interval_s`` apart, the source's default if None)."""
    nvml = (
        NvmlSource(watch_pid=watch_pid)
        if gpm_interval_s is None
        else NvmlSource(watch_pid=watch_pid, gpm_interval_s=gpm_interval_s)
    )
    return [HostSource(watch_pid), nvml]


class Sampler:
    """Samples the sources every ``interval_s`` seconds on a background thread.

    >>> s = Sampler(interval_s=0.1, watch_pid=engine_pid, writer=bundle_writer)
    >>> s.start(); ...; s.stop()
    >>> s.latest()  # newest Sample, or None
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        watch_pid: int | None = None,
        writer: BundleWriter | None = None,
        sources: Sequence[Source] | None = None,
        *,
        buffer_size: int = DEFAULT_BUFFER,
        instance: str | None = None,
        write_every_s: float = WRITE_EVERY_S,
        flush_writes: bool = False,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        self.interval_s = interval_s
        self.watch_pid = watch_pid
        self.writer = writer
        self.instance = instance
        self.sources: list[Source] = list(sources) if sources is not None else default_sources(watch_pid)
        self.stats = SamplerStats()
        self._ring: deque[Sample] = deque(maxlen=buffer_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # held while the loop runs; stop() releases it, which wakes the loop's timed acquire at once
        # (one C call per tick, where Event.wait builds a Condition waiter every time)
        self._wake = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = False
        self._logged: dict[str, float] = {}
        # samples not yet handed to the writer: at most write_every_s worth (bounded)
        self._unwritten: list[Sample] = []
        self._write_every = max(1, round(write_every_s / interval_s))
        self.flush_writes = flush_writes  # each hand-over also flushes the writer's samples segment

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        """Start the sources (NVML init, psutil priming) without starting the thread."""
        if self._started:
            return
        for src in self.sources:
            try:
                src.start()
            except Exception:
                log.exception("source %s failed to start", getattr(src, "name", src))
        self._started = True

    def start(self) -> Sampler:
        """Open the sources and start sampling on a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self.open()
        self._stop.clear()
        self._wake.acquire(blocking=False)
        self._thread = threading.Thread(target=self._run, name="bmap-agent-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread, close the sources and flush rows to the writer (the writer stays open)."""
        self._stop.set()
        try:
            self._wake.release()
        except RuntimeError:  # not held: never started, or already stopped
            pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for src in self.sources:
            try:
                src.close()
            except Exception:
                log.exception("source %s failed to close", getattr(src, "name", src))
        self._started = False
        if self.writer is not None:
            self._write_unwritten()
            try:
                self.writer.flush("samples")
            except Exception:
                log.exception("flushing samples failed")

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- reading ----------------------------------------------------------------
    def latest(self) -> Sample | None:
        """The newest sample (cheap: no hardware access)."""
        with self._lock:
            return self._ring[-1] if self._ring else None

    def samples(self) -> list[Sample]:
        """The samples still in the ring buffer, oldest first."""
        with self._lock:
            return list(self._ring)

    # -- sampling ---------------------------------------------------------------
    def sample_once(self) -> Sample:
        """Take one sample now (the loop calls this; tests may too)."""
        if not self._started:
            self.open()
        t0 = now_ns()
        sample = Sample(ts_ns=t0)
        for src in self.sources:
            try:
                src.collect(sample)
            except Exception:
                self.stats.source_errors += 1
                self._log_error(f"source {getattr(src, 'name', src)} failed this tick")
        sample.duration_ns = now_ns() - t0
        self.stats.ticks += 1
        self.stats.last_duration_ns = sample.duration_ns
        with self._lock:
            self._ring.append(sample)
        if self.writer is not None:
            self._unwritten.append(sample)
            if len(self._unwritten) >= self._write_every:
                self._write_unwritten()
        return sample

    def _write_unwritten(self) -> None:
        """Hand the samples taken since the last hand-over to the writer, column-wise."""
        batch, self._unwritten = self._unwritten, []
        if not batch or self.writer is None:
            return
        columns = to_columns(batch, self.instance)
        try:
            self.writer.extend_columns("samples", columns)
            self.stats.rows_written += len(columns.get("ts_ns", ()))
            if self.flush_writes:
                self.writer.flush("samples")
        except Exception:
            self._log_error("writing samples to the bundle failed")

    def _log_error(self, message: str) -> None:
        """Log with the traceback, at most once a minute per message (the loop runs at 10 Hz)."""
        now = time.monotonic()
        if now - self._logged.get(message, float("-inf")) >= ERROR_LOG_EVERY_S:
            self._logged[message] = now
            log.exception("%s (repeats are logged at most once a minute)", message)

    def _run(self) -> None:
        interval = self.interval_s
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.sample_once()
            k += 1
            due = t0 + k * interval
            now = time.monotonic()
            if now - due >= interval:  # overran by whole intervals: skip those grid points
                skipped = int((now - due) // interval)
                self.stats.missed_ticks += skipped
                k += skipped
                due = t0 + k * interval
            due = self._delay_for_sources(due)
            if self._wake.acquire(timeout=max(0.0, due - now)):  # released by stop()
                self._wake.release()
                return

    def _delay_for_sources(self, due: float) -> float:
        """``due``, or up to ``MAX_TICK_DELAY_S`` later when a source asks not to be read before
        then (GPM samples at least 100 ms apart): one wake-up instead of a wait inside the tick.
        Only this tick moves; the grid of the ones after it does not."""
        for src in self.sources:
            not_before = getattr(src, "not_before_ns", None)
            try:
                t = not_before() if not_before is not None else None
            except Exception:
                self._log_error(f"source {getattr(src, 'name', src)}: not_before_ns failed")
                continue
            if t is not None and due < t / 1e9 <= due + MAX_TICK_DELAY_S:
                due = t / 1e9
        return due


def start_agent_in_process(
    writer: BundleWriter | None,
    watch_pid: int | None = None,
    interval: float = DEFAULT_INTERVAL_S,
    *,
    instance: str | None = None,
) -> Sampler:
    """Start a sampler thread inside the calling process (``bottleneck-map run`` uses
    this with the engine's own pid). Returns the running :class:`Sampler`; call
    ``stop()`` before closing the writer."""
    return Sampler(interval_s=interval, watch_pid=watch_pid, writer=writer, instance=instance).start()
