"""``bottleneck-map collect``: build a bundle from a real deployment.

An OTLP/HTTP receiver (``POST /v1/traces``, protobuf or JSON) turns vLLM's
``llm_request`` spans into request rows as they arrive; when it stops, range
queries against a Prometheus server fill the samples table for the same
interval (engine series, agents, dcgm-exporter, node-exporter). The bundle has
no step records (``meta["capabilities"]["steps"]`` is false) and its clock is
Unix time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bottleneck_map.bundle import BundleWriter, new_meta
from bottleneck_map.ingest.otlp import (
    INSTANCE_KEYS,
    JSON,
    PROTOBUF,
    STAGE_SPANS,
    OtlpError,
    Span,
    apply_stage_spans,
    decode,
    decompress,
    request_row,
    response_model,
)

PRODUCER = "bottleneck-map collect"
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_PENDING_CHILDREN = 100_000  # stage spans kept while waiting for their llm_request parent


def unix_clock() -> dict[str, Any]:
    return {"kind": "unix", "unit": "ns", "origin_unix_ns": 0, "origin_monotonic_ns": None}


def collect_meta(**sections: Any) -> dict[str, Any]:
    meta = new_meta(
        PRODUCER,
        clock=unix_clock(),
        capabilities={"steps": False, "samples": False, "streaming": False},
        model={},
        engine={},
        device={},
        workload={"description": "requests observed by the OTLP receiver of bottleneck-map collect"},
    )
    meta.update(sections)
    return meta


@dataclass
class TraceSink:
    """Turns decoded spans into request rows of one bundle, from any thread.

    A span already recorded (same trace and span id) is ignored, so an exporter
    retry never duplicates a request. Request ids that repeat across instances
    are made unique with the instance (or span id) as a suffix.
    """

    writer: BundleWriter
    instance_keys: tuple[str, ...] = INSTANCE_KEYS
    spans_received: int = 0
    requests: int = 0
    other_spans: int = 0
    first_arrival_ns: int | None = None
    last_finished_ns: int | None = None
    model: str | None = None
    streamed: int = 0  # requests with delivery stamps (from our engine's stream child spans)
    _seen_spans: set[tuple[str, str]] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set)
    _children: dict[tuple[str, str], list[Span]] = field(default_factory=dict)
    _n_children: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, spans: Iterable[Span]) -> int:
        spans = list(spans)
        rows = []
        with self._lock:
            self.spans_received += len(spans)
            for span in spans:
                if span.name in STAGE_SPANS and span.parent_span_id:
                    self._keep_child(span)
            for span in spans:
                row = request_row(span, self.instance_keys)
                if row is None:
                    self.other_spans += 1
                    continue
                key = (span.trace_id, span.span_id)
                if key in self._seen_spans:
                    continue
                self._seen_spans.add(key)
                children = self._children.pop(key, [])
                self._n_children -= len(children)
                row = apply_stage_spans(row, children)
                self.streamed += row.get("last_byte_ns") is not None
                row["request_id"] = self._unique(row["request_id"], row["instance"], span.span_id)
                rows.append(row)
                end = row["finished_ns"] or row["arrival_ns"]
                self.first_arrival_ns = min(self.first_arrival_ns or row["arrival_ns"], row["arrival_ns"])
                self.last_finished_ns = max(self.last_finished_ns or end, end)
            self.requests += len(rows)
            model = self.model is None and response_model(spans)
        if rows:
            self.writer.extend("requests", rows)
        if model:
            self.model = model
            self.writer.update_meta(model={**self.writer.meta.get("model", {}), "name": model})
        return len(rows)

    def _keep_child(self, span: Span) -> None:
        if self._n_children >= MAX_PENDING_CHILDREN:  # drop the oldest parent's children
            oldest = next(iter(self._children))
            self._n_children -= len(self._children.pop(oldest))
        self._children.setdefault((span.trace_id, span.parent_span_id or ""), []).append(span)
        self._n_children += 1

    def _unique(self, rid: str, instance: str | None, span_id: str) -> str:
        for candidate in (rid, f"{rid}@{instance}" if instance else None, f"{rid}@{span_id}"):
            if candidate is not None and candidate not in self._ids:
                self._ids.add(candidate)
                return candidate
        n = 2
        while f"{rid}@{span_id}#{n}" in self._ids:
            n += 1
        self._ids.add(f"{rid}@{span_id}#{n}")
        return f"{rid}@{span_id}#{n}"

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"spans_received": self.spans_received, "requests": self.requests, "other_spans": self.other_spans}


def add_otlp_file(sink: TraceSink, path: str | Path) -> int:
    """Ingest an OTLP/JSON file: one export request per line (the OpenTelemetry Collector's
    ``file`` exporter) or one JSON document. Raises OtlpError naming the file and line."""
    text = Path(path).read_text()
    stripped = text.strip()
    if not stripped:
        return 0
    try:
        json.loads(stripped)
        chunks = [stripped]  # one document
    except json.JSONDecodeError:
        chunks = stripped.splitlines()  # JSON lines
    spans: list[Span] = []
    for lineno, chunk in enumerate(chunks, 1):
        if not chunk.strip():
            continue
        try:
            spans.extend(decode(chunk.encode(), JSON))
        except OtlpError as exc:
            where = f"{path}" if len(chunks) == 1 else f"{path}:{lineno}"
            raise OtlpError(f"{where}: {exc}") from None
    return sink.add(spans)


def otlp_app(sink: TraceSink) -> Starlette:
    """The OTLP/HTTP trace receiver. A bad payload gets 400 with the reason and
    changes nothing; everything recorded before it is kept."""

    async def traces(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse(f"body larger than {MAX_BODY_BYTES} bytes", status_code=413)
        ctype = request.headers.get("content-type", "")
        try:
            spans = decode(decompress(body, request.headers.get("content-encoding")), ctype)
        except OtlpError as exc:
            if ctype.startswith(JSON):
                return JSONResponse({"code": 3, "message": str(exc)}, status_code=400)
            return PlainTextResponse(str(exc), status_code=400)
        sink.add(spans)
        if ctype.startswith(PROTOBUF):
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)
        return JSONResponse({})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **sink.stats()})

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/health", health)])


def add_prometheus_samples(
    writer: BundleWriter,
    prometheus: str,
    start_ns: int,
    end_ns: int,
    *,
    instances: Sequence[str] | None = None,
    step_s: float | None = None,
) -> dict[str, int]:
    """Query Prometheus over ``[start_ns, end_ns]`` (Unix ns) and append the sample rows."""
    from bottleneck_map.ingest.prometheus import collect_samples

    rows, points = collect_samples(prometheus, start_ns, end_ns, instances=instances, step_s=step_s)
    writer.extend("samples", rows)
    return points


def finish(
    writer: BundleWriter,
    sink: TraceSink,
    started_ns: int,
    *,
    prometheus: str | None,
    instances: Sequence[str] | None,
    step_s: float | None,
    lookback_s: float = 0.0,
) -> dict[str, Any]:
    """Close a collection: Prometheus samples for the whole interval, meta, flush."""
    stopped_ns = time.time_ns()
    start = min(started_ns - round(lookback_s * 1e9), sink.first_arrival_ns or started_ns)
    end = max(stopped_ns, sink.last_finished_ns or stopped_ns)
    prom: dict[str, Any] = {}
    if prometheus:
        points = add_prometheus_samples(writer, prometheus, start, end, instances=instances, step_s=step_s)
        prom = {"url": prometheus, "instances": list(instances or []), "points": points}
    writer.update_meta(
        capabilities={"steps": False, "samples": bool(prom.get("points")), "streaming": sink.streamed > 0},
        ingest={"otlp": sink.stats(), "prometheus": prom, "start_unix_ns": start, "end_unix_ns": end},
    )
    writer.close()
    writer.update_meta(end_ns=time.time_ns())  # this bundle's clock is Unix time
    return {"start_unix_ns": start, "end_unix_ns": end, **sink.stats(), "prometheus_points": prom.get("points", {})}
