"""prometheus-client custom Collector over the sampler's latest sample.

A scrape only reads the newest :class:`~bottleneck_map.agent.sample.Sample`
already in memory: it never calls NVML or psutil, so scrape latency does not
depend on the hardware and a scrape storm cannot slow sampling down.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bottleneck_map.agent.names import (
    CLOCK_EVENT_ACTIVE,
    GPU_LOST,
    GPU_METRICS,
    OTHER_METRICS,
    NameScheme,
    gpu_labels,
)
from bottleneck_map.agent.nvml import NvmlSource
from bottleneck_map.agent.sample import GpuSample, Sample
from bottleneck_map.agent.sampler import Sampler
from bottleneck_map.schema import CLOCK_EVENT_BITS

_HELP = {m.name: m.help for m in OTHER_METRICS}


def _family(name: str, kind: str, help_text: str, labels: list[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class AgentCollector(Collector):
    """Exposes the newest sample of ``sampler`` in the chosen naming scheme."""

    def __init__(
        self,
        sampler: Sampler,
        scheme: NameScheme | str = NameScheme.prometheus,
        *,
        hostname: str | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.sampler = sampler
        self.scheme = NameScheme(scheme)
        self.hostname = hostname or socket.gethostname()
        self._clock_ns = clock_ns

    def describe(self) -> list[Metric]:
        return []  # do not let the registry call collect() at registration

    def collect(self) -> Iterator[Metric]:
        sample = self.sampler.latest()
        yield from self._agent_metrics(sample)
        if sample is None:
            return
        yield from self._gpu_metrics(sample.gpus)
        yield from self._host_metrics(sample)

    # -- agent -------------------------------------------------------------------
    def _agent_metrics(self, sample: Sample | None) -> Iterator[Metric]:
        h = [self.hostname]
        st = self.sampler.stats
        for name, kind, value in (
            ("bmap_agent_samples_total", "counter", st.ticks),
            ("bmap_agent_missed_ticks_total", "counter", st.missed_ticks),
            ("bmap_agent_interval_seconds", "gauge", self.sampler.interval_s),
        ):
            fam = _family(name, kind, _HELP[name], ["hostname"])
            fam.add_metric(h, value)
            yield fam
        nvml = next((s for s in self.sampler.sources if isinstance(s, NvmlSource)), None)
        fam = GaugeMetricFamily("bmap_agent_nvml_available", _HELP["bmap_agent_nvml_available"], labels=["hostname"])
        fam.add_metric(h, 1.0 if nvml is not None and nvml.status.available else 0.0)
        yield fam
        if sample is not None:
            if sample.duration_ns is not None:
                name = "bmap_agent_sample_duration_seconds"
                fam = GaugeMetricFamily(name, _HELP[name], labels=["hostname"])
                fam.add_metric(h, sample.duration_ns / 1e9)
                yield fam
            name = "bmap_agent_sample_age_seconds"
            fam = GaugeMetricFamily(name, _HELP[name], labels=["hostname"])
            fam.add_metric(h, max(0, self._clock_ns() - sample.ts_ns) / 1e9)
            yield fam

    # -- GPU ---------------------------------------------------------------------
    def _labels(self, g: GpuSample, scheme: NameScheme) -> dict[str, str]:
        return gpu_labels(scheme, g.index, g.uuid, g.name, g.pci_bus_id, self.hostname)

    def _gpu_metrics(self, gpus: list[GpuSample]) -> Iterator[Metric]:
        if not gpus:
            return
        dcgm = self.scheme is NameScheme.dcgm
        live = [g for g in gpus if not g.lost]
        for m in GPU_METRICS:
            use_dcgm = dcgm and m.dcgm is not None
            scheme = NameScheme.dcgm if use_dcgm else NameScheme.prometheus
            per_pid = m.field.startswith("proc_")
            fam = None
            for g in live:
                value = getattr(g, m.field)
                if value is None and use_dcgm and m.dcgm_fallback:
                    value = getattr(g, m.dcgm_fallback)
                if value is None:
                    continue
                labels = self._labels(g, scheme)
                if per_pid:
                    labels["pid"] = str(self.sampler.watch_pid)
                if fam is None:
                    if use_dcgm:
                        # dcgm-exporter's names carry no _total suffix, so every dcgm field
                        # (the mJ energy counter included) is exposed as a gauge under its exact name.
                        fam = GaugeMetricFamily(m.dcgm, f"{m.help} (in {m.dcgm_unit}).", labels=list(labels))
                    else:
                        fam = _family(m.prom, m.kind, m.help, list(labels))
                fam.add_metric(list(labels.values()), float(value) * (m.dcgm_scale if use_dcgm else 1.0))
            if fam is not None:
                yield fam
        yield from self._clock_events(live)
        fam = GaugeMetricFamily(GPU_LOST, _HELP[GPU_LOST], labels=["gpu", "hostname"])
        for g in gpus:
            fam.add_metric([str(g.index), self.hostname], 1.0 if g.lost else 0.0)
        yield fam

    def _clock_events(self, gpus: list[GpuSample]) -> Iterator[Metric]:
        fam = None
        for g in gpus:
            if g.clock_event_reasons is None:
                continue
            labels = self._labels(g, NameScheme.prometheus)
            if fam is None:
                fam = GaugeMetricFamily(CLOCK_EVENT_ACTIVE, _HELP[CLOCK_EVENT_ACTIVE], labels=[*labels, "reason"])
            for reason, bit in CLOCK_EVENT_BITS.items():
                fam.add_metric([*labels.values(), reason], 1.0 if g.clock_event_reasons & bit else 0.0)
        if fam is not None:
            yield fam

    # -- host and watched process ------------------------------------------------------
    def _gauge(self, name: str, value: float | None) -> Iterator[Metric]:
        if value is not None:
            fam = GaugeMetricFamily(name, _HELP[name], labels=["hostname"])
            fam.add_metric([self.hostname], value)
            yield fam

    def _host_metrics(self, sample: Sample) -> Iterator[Metric]:
        h = sample.host
        host = self.hostname
        if h is not None:
            yield from self._gauge("bmap_host_cpu_utilization_ratio", h.cpu_util_ratio)
            if h.cpu_util_per_core:
                name = "bmap_host_cpu_core_utilization_ratio"
                fam = GaugeMetricFamily(name, _HELP[name], labels=["cpu", "hostname"])
                for i, v in enumerate(h.cpu_util_per_core):
                    fam.add_metric([str(i), host], v)
                yield fam
            for name, value in (
                ("bmap_host_load1", h.load1),
                ("bmap_host_load5", h.load5),
                ("bmap_host_load15", h.load15),
                ("bmap_host_memory_used_bytes", h.host_mem_used_bytes),
                ("bmap_host_memory_available_bytes", h.host_mem_available_bytes),
                ("bmap_host_memory_total_bytes", h.host_mem_total_bytes),
                ("bmap_host_swap_used_bytes", h.host_swap_used_bytes),
                ("bmap_host_swap_total_bytes", h.host_swap_total_bytes),
            ):
                yield from self._gauge(name, value)
            for name, table, attr in (
                ("bmap_host_network_receive_bytes_total", h.net, "rx_bytes"),
                ("bmap_host_network_transmit_bytes_total", h.net, "tx_bytes"),
                ("bmap_host_network_receive_packets_total", h.net, "rx_packets"),
                ("bmap_host_network_transmit_packets_total", h.net, "tx_packets"),
                ("bmap_host_disk_read_bytes_total", h.disk, "read_bytes"),
                ("bmap_host_disk_written_bytes_total", h.disk, "write_bytes"),
            ):
                if table:
                    fam = CounterMetricFamily(name, _HELP[name], labels=["device", "hostname"])
                    for dev, counters in sorted(table.items()):
                        fam.add_metric([dev, host], getattr(counters, attr))
                    yield fam
        p = sample.proc
        if p is not None:
            pid = str(p.pid)
            for name, value in (
                ("bmap_process_cpu_ratio", p.cpu_ratio),
                ("bmap_process_threads", p.num_threads),
                ("bmap_process_resident_memory_bytes", p.rss_bytes),
            ):
                if value is not None:
                    fam = GaugeMetricFamily(name, _HELP[name], labels=["pid", "hostname"])
                    fam.add_metric([pid, host], value)
                    yield fam
            name = "bmap_process_context_switches_total"
            fam = CounterMetricFamily(name, _HELP[name], labels=["pid", "kind", "hostname"])
            for kind, value in (("voluntary", p.ctx_switches_voluntary), ("involuntary", p.ctx_switches_involuntary)):
                if value is not None:
                    fam.add_metric([pid, kind, host], value)
            yield fam
