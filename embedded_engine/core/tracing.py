"""Request and step records into the trace bundle, and OpenTelemetry spans with vLLM's attribute keys.

Spans are built after the fact, when a request is done, with explicit start and end
times: bundle times (CLOCK_MONOTONIC ns) are converted to Unix ns through the clock
origin in ``meta.json``. Export goes through the SDK's OTLP/HTTP exporter only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set;
tests inject their own tracer provider.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bottleneck_map.bundle import BundleWriter
from bottleneck_map.embedded_engine.core.sequence import Sequence

TRACER_NAME = "bottleneck_map.embedded_engine"


def otel_provider_from_env(service_name: str = "bottleneck-map-engine"):
    """A TracerProvider exporting over OTLP/HTTP when the standard variables ask for it, else None."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def parent_from_traceparent(traceparent: str | None, tracestate: str | None = None):
    """An OpenTelemetry context from a W3C ``traceparent`` header (None when absent or invalid)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return TraceContextTextMapPropagator().extract(carrier)


@dataclass
class Clock:
    """Maps bundle-clock ns to Unix ns."""

    origin_monotonic_ns: int
    origin_unix_ns: int

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Clock:
        c = meta["clock"]
        return cls(int(c["origin_monotonic_ns"]), int(c["origin_unix_ns"]))

    def unix(self, ns: int) -> int:
        return ns - self.origin_monotonic_ns + self.origin_unix_ns


def request_row(seq: Sequence, instance: str | None, record_prompts: bool) -> dict[str, Any]:
    t = seq.trace
    return {
        "request_id": seq.request_id,
        "instance": instance,
        "workload_class": t.workload_class,
        "trace_id": t.trace_id,
        "finish_reason": seq.finish_reason,
        "error": t.error,
        "prompt_tokens": seq.num_prompt_tokens,
        "output_tokens": seq.num_output_tokens,
        "max_tokens": seq.params.max_tokens,
        "cached_prompt_tokens": seq.num_cached_tokens,
        "recomputed_tokens": t.recomputed_tokens,
        "swapped_bytes": t.swapped_bytes,
        "arrival_ns": t.arrival_ns,
        "tokenize_start_ns": t.tokenize_start_ns,
        "tokenize_end_ns": t.tokenize_end_ns,
        "queued_ns": t.queued_ns,
        "first_scheduled_ns": t.first_scheduled_ns,
        "first_token_ns": t.first_token_ns,
        "finished_ns": t.finished_ns,
        "first_byte_ns": t.first_byte_ns,
        "last_byte_ns": t.last_byte_ns,
        "scheduled_ns": t.scheduled_ns,
        "preempted_ns": t.preempted_ns,
        "resumed_ns": t.resumed_ns,
        "token_ns": t.token_ns,
        "delivered_ns": t.delivered_ns if t.delivered_ns or t.first_byte_ns is not None else None,
        "prompt_text": t.prompt_text if record_prompts else None,
        "output_text": t.output_text if record_prompts else None,
    }


def _s(a: int | None, b: int | None) -> float | None:
    return None if a is None or b is None else (b - a) / 1e9


def span_attributes(seq: Sequence, model_name: str) -> dict[str, Any]:
    """vLLM's request-span attributes (latencies in seconds), with vLLM v1's meanings:
    time in queue is queued -> first scheduled, prefill is first scheduled -> first token."""
    t, p = seq.trace, seq.params
    end = t.finished_ns
    decode_start = t.prefill_end_ns or t.first_token_ns
    attrs: dict[str, Any] = {
        "gen_ai.request.id": seq.request_id,
        "gen_ai.response.model": model_name,
        "gen_ai.request.max_tokens": p.max_tokens,
        "gen_ai.request.temperature": p.temperature,
        "gen_ai.request.top_p": p.top_p,
        "gen_ai.request.top_k": p.top_k,
        "gen_ai.usage.prompt_tokens": seq.num_prompt_tokens,
        "gen_ai.usage.completion_tokens": seq.num_output_tokens,
        "gen_ai.usage.num_sequences": 1,
        "gen_ai.latency.time_in_queue": _s(t.queued_ns, t.first_scheduled_ns),
        "gen_ai.latency.time_to_first_token": _s(t.arrival_ns, t.first_token_ns),
        "gen_ai.latency.e2e": _s(t.arrival_ns, end),
        "gen_ai.latency.time_in_scheduler": _s(t.queued_ns, t.first_scheduled_ns),
        "gen_ai.latency.time_in_model_prefill": _s(t.first_scheduled_ns, decode_start),
        "gen_ai.latency.time_in_model_decode": _s(decode_start, end) if t.first_token_ns else None,
        "gen_ai.latency.time_in_model_inference": _s(t.first_scheduled_ns, end),
        "gen_ai.latency.time_in_model_forward": _s(t.first_scheduled_ns, end),
        "bottleneck_map.workload_class": t.workload_class,
        "bottleneck_map.finish_reason": seq.finish_reason,
        "bottleneck_map.cached_prompt_tokens": seq.num_cached_tokens,
        "bottleneck_map.num_preemptions": len(t.preempted_ns),
    }
    if t.error:
        attrs["bottleneck_map.error"] = t.error
    return {k: v for k, v in attrs.items() if v is not None}


def emit_spans(tracer, seq: Sequence, clock: Clock, model_name: str) -> str:
    """One ``llm_request`` span with a child per stage; returns the trace id (hex)."""
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    t = seq.trace
    end = max(x for x in (t.finished_ns, t.last_byte_ns, t.arrival_ns) if x is not None)
    root = tracer.start_span(
        "llm_request",
        context=t.parent_context,
        kind=trace.SpanKind.SERVER,
        start_time=clock.unix(t.arrival_ns),
        attributes=span_attributes(seq, model_name),
    )
    if t.error:
        root.set_status(Status(StatusCode.ERROR, t.error))
    ctx = trace.set_span_in_context(root)
    decode_start = t.prefill_end_ns or t.first_token_ns
    stages = (
        ("tokenize", t.tokenize_start_ns, t.tokenize_end_ns),
        ("queue", t.queued_ns, t.first_scheduled_ns),
        ("prefill", t.first_scheduled_ns, decode_start),
        ("decode", decode_start, t.finished_ns if t.first_token_ns else None),
        ("stream", t.first_byte_ns, t.last_byte_ns),
    )
    for name, a, b in stages:
        if a is None or b is None:
            continue
        span = tracer.start_span(name, context=ctx, start_time=clock.unix(a))
        if name == "prefill":
            span.set_attribute("bottleneck_map.preemptions", len(t.preempted_ns))
        span.end(end_time=clock.unix(b))
    root.end(end_time=clock.unix(end))
    return format(root.get_span_context().trace_id, "032x")


class TraceSink:
    """Where the engine's records go: a bundle writer and/or an OpenTelemetry tracer provider."""

    def __init__(
        self,
        writer: BundleWriter | None = None,
        tracer_provider=None,
        *,
        model_name: str = "",
        instance: str | None = None,
        record_prompts: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.writer = writer
        self.tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None else None
        self.tracer_provider = tracer_provider
        self.model_name = model_name
        self.instance = instance
        self.record_prompts = record_prompts
        if clock is None and writer is not None:
            clock = Clock.from_meta(writer.meta)
        if clock is None:
            from bottleneck_map.bundle import clock_description

            clock = Clock.from_meta({"clock": clock_description()})
        self.clock = clock
        self.num_requests = 0
        self.num_steps = 0

    @property
    def enabled(self) -> bool:
        return self.writer is not None or self.tracer is not None

    def request(self, seq: Sequence) -> None:
        if self.tracer is not None:
            seq.trace.trace_id = emit_spans(self.tracer, seq, self.clock, self.model_name)
        elif seq.trace.parent_context is not None and seq.trace.trace_id is None:
            from opentelemetry import trace

            ctx = trace.get_current_span(seq.trace.parent_context).get_span_context()
            if ctx.is_valid:
                seq.trace.trace_id = format(ctx.trace_id, "032x")
        if self.writer is not None:
            self.writer.add_request(request_row(seq, self.instance, self.record_prompts))
        self.num_requests += 1

    def step(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            row["instance"] = self.instance
            self.writer.add_step(row)
        self.num_steps += 1

    def close(self) -> None:
        if self.tracer_provider is not None and hasattr(self.tracer_provider, "force_flush"):
            self.tracer_provider.force_flush()
