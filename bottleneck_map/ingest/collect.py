"""``bottleneck-map collect``: build a bundle from a real deployment.

An OTLP/HTTP receiver (``POST /v1/traces``, protobuf or JSON) turns vLLM's
``llm_request`` spans into request rows as they arrive; when it stops, range
queries against a Prometheus server fill the samples table for the same
interval (engine series, agents, dcgm-exporter, node-exporter). The bundle has
no step records (``meta["capabilities"]["steps"]`` is false) and its clock is
Unix time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bottleneck_map.bundle import BundleWriter, new_meta, unfit_rows
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.ingest.otlp import (
    INSTANCE_KEYS,
    JSON,
    PROTOBUF,
    SPAN_NAME,
    STAGE_SPANS,
    OtlpError,
    Span,
    TooLarge,
    apply_stage_spans,
    decode,
    decompress,
    request_row,
    response_model,
)

PRODUCER = "bottleneck-map collect"
MAX_BODY_BYTES = 16 * 1024 * 1024  # an OTLP export request as sent (compressed or not)
MAX_INFLATED_BYTES = 32 * 1024 * 1024  # the same once decompressed
BODY_TIMEOUT_S = 30.0  # to receive a whole body
HEADER_TIMEOUT_S = 10.0  # to receive the request line and headers
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 1024  # lowered to what the open-file limit allows
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
    without_instance: int = 0  # requests whose span names no serving instance
    instances: set[str] = field(default_factory=set)
    _seen_spans: set[tuple[str, str]] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set)
    _children: dict[tuple[str, str], list[Span]] = field(default_factory=dict)
    _n_children: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, spans: Iterable[Span]) -> int:
        """Record a batch of spans, all or nothing: a span that cannot become a row the bundle
        stores raises OtlpError naming it, and then nothing of the batch is recorded or marked
        as seen (so the sender's corrected retry is not taken for a duplicate)."""
        spans = list(spans)
        with self._lock:
            rows, keys, children = self._rows(spans)
            bad = unfit_rows("requests", rows)
            if bad:
                i, why = bad[0]
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise OtlpError(f"request {rows[i]['request_id']!r}: {why}{more}; nothing of this batch was recorded")
            # accepted: commit the batch
            self.spans_received += len(spans)
            self.other_spans += sum(1 for s in spans if s.name != SPAN_NAME)
            self._seen_spans.update(keys)
            for row in rows:
                self._ids.add(row["request_id"])
            for key in keys:
                self._n_children -= len(self._children.pop(key, []))
            for key, kids in children.items():
                if key not in keys:
                    for kid in kids:
                        self._keep_child(kid)
            for row in rows:
                self.streamed += row.get("last_byte_ns") is not None
                if row.get("instance"):
                    self.instances.add(row["instance"])
                else:
                    self.without_instance += 1
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

    def _rows(self, spans: list[Span]) -> tuple[list[dict[str, Any]], set[tuple[str, str]], dict]:
        """The new request rows of a batch, the span keys they come from and the batch's stage
        children by parent; changes nothing (raises OtlpError for a span that cannot be a row)."""
        children: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            if span.name in STAGE_SPANS and span.parent_span_id:
                children.setdefault((span.trace_id, span.parent_span_id), []).append(span)
        rows, keys, ids = [], set(), set()
        for span in spans:
            row = request_row(span, self.instance_keys)
            key = (span.trace_id, span.span_id)
            if row is None or key in self._seen_spans or key in keys:
                continue
            keys.add(key)
            row = apply_stage_spans(row, self._children.get(key, []) + children.get(key, []))
            row["request_id"] = self._unique(row["request_id"], row["instance"], span.span_id, ids)
            ids.add(row["request_id"])
            rows.append(row)
        return rows, keys, children

    def _unique(self, rid: str, instance: str | None, span_id: str, batch: set[str]) -> str:
        """``rid`` made unique among the recorded ids and those of the batch being built."""

        def taken(c: str) -> bool:
            return c in self._ids or c in batch

        for candidate in (rid, f"{rid}@{instance}" if instance else None, f"{rid}@{span_id}"):
            if candidate is not None and not taken(candidate):
                return candidate
        n = 2
        while taken(f"{rid}@{span_id}#{n}"):
            n += 1
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
    try:
        return sink.add(spans)
    except OtlpError as exc:  # a span whose row the bundle could not store: nothing of the file is kept
        raise OtlpError(f"{path}: {exc}") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (TooLarge) as soon as it is known to pass ``max_bytes``: at once
    for a declared Content-Length, else when the bytes received pass the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise OtlpError(f"Content-Length {declared[:40]!r} is not a number") from None
        if n > max_bytes:
            raise TooLarge(f"Content-Length {n} is over the {max_bytes}-byte body limit")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"body is over the {max_bytes}-byte body limit")
        chunks.append(chunk)
    return b"".join(chunks)


def otlp_app(
    sink: TraceSink,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> Starlette:
    """The OTLP/HTTP trace receiver. A bad payload gets 400 with the reason and changes nothing;
    everything recorded before it is kept. A body over ``max_body_bytes`` on the wire, or over
    ``max_inflated_bytes`` once decompressed, gets 413 (the connection is closed without reading
    the rest); a body not received within ``body_timeout_s`` gets 408."""

    def error(status: int, message: str, ctype: str) -> Response:
        if ctype.startswith(JSON):
            return JSONResponse({"code": 3, "message": message}, status_code=status, headers={"connection": "close"})
        return PlainTextResponse(message, status_code=status, headers={"connection": "close"})

    async def traces(request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        try:
            body = await asyncio.wait_for(read_body(request, max_body_bytes), body_timeout_s)
            spans = decode(decompress(body, request.headers.get("content-encoding"), max_inflated_bytes), ctype)
            del body
            sink.add(spans)
        except TimeoutError:
            return error(408, f"body not received within {body_timeout_s:g} s", ctype)
        except TooLarge as exc:
            return error(413, str(exc), ctype)
        except OtlpError as exc:
            return error(400, str(exc), ctype)
        if ctype.startswith(PROTOBUF):
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)
        return JSONResponse({})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **sink.stats()})

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/health", health)])


def guard_connections(
    server: UvicornServer,
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
) -> int:
    """Bound what one client can hold of the receiver, with the connection guard ``serve`` uses:
    headers must arrive within ``header_timeout_s`` and a body within ``body_timeout_s`` (else
    408 and the connection is closed), headers are at most ``max_header_bytes``, and a
    connection beyond ``max_connections`` (fitted to the open-file limit) gets 503 and is closed
    at once. Returns the connection cap in force."""
    from bottleneck_map.embedded_engine.serving.limits import (
        GuardedH11Protocol,
        ServeLimits,
        fit_connections_to_fd_limit,
        quiet_accept_errors,
    )

    cap = fit_connections_to_fd_limit(max_connections)
    limits = ServeLimits(
        max_header_bytes=max_header_bytes,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        max_connections=cap,
    )
    server.server.config.http = GuardedH11Protocol.with_limits(limits)
    server.server.config.h11_max_incomplete_event_size = max_header_bytes
    quiet_accept_errors()
    return cap


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops collection as Ctrl-C does (KeyboardInterrupt), so the
    caller flushes every acknowledged span and closes the bundle; the default handler would exit
    at once. uvicorn handles the signal while it serves and raises it again once it has stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    scrapers: Sequence[Any] = (),
    target: Any = None,
) -> dict[str, Any]:
    """Close a collection: last scrapes, Prometheus samples for the whole interval, meta, flush."""
    for sc in scrapers:
        sc.stop()
    stopped_ns = time.time_ns()
    start = min(started_ns - round(lookback_s * 1e9), sink.first_arrival_ns or started_ns)
    end = max(stopped_ns, sink.last_finished_ns or stopped_ns)
    prom: dict[str, Any] = {}
    if prometheus:
        points = add_prometheus_samples(writer, prometheus, start, end, instances=instances, step_s=step_s)
        prom = {"url": prometheus, "instances": list(instances or []), "points": points}
    scrapes = sum(sc.scrapes for sc in scrapers)
    warnings = _warnings(sink, scrapers)
    meta = writer.meta
    engine = {**(meta.get("engine") or {})}
    model = {**(meta.get("model") or {})}
    device = {**(meta.get("device") or {})}
    for sc in scrapers:
        if sc.kind == "agent":
            if not device.get("name"):  # --device-name / --measure-peaks win over the agent
                device = {**sc.device_meta(), **device}
            continue
        engine = {**sc.engine_meta(), **engine}  # flags win over what the server states
        scraped = {k: v for k, v in sc.model.items() if v is not None}
        model = {**scraped, **{k: v for k, v in model.items() if v is not None}}
    writer.update_meta(
        capabilities={
            "steps": False,
            "samples": bool(prom.get("points")) or scrapes > 0,
            "streaming": sink.streamed > 0,
        },
        engine=engine,
        model=model,
        device=device,
        ingest={
            "otlp": sink.stats(),
            "prometheus": prom,
            "scrape": [sc.meta() for sc in scrapers],
            "start_unix_ns": start,
            "end_unix_ns": end,
            "warnings": warnings,
        },
    )
    writer.close()
    writer.update_meta(end_ns=time.time_ns())  # this bundle's clock is Unix time
    return {
        "start_unix_ns": start,
        "end_unix_ns": end,
        **sink.stats(),
        "prometheus_points": prom.get("points", {}),
        "scrapes": scrapes,
        "warnings": warnings,
    }


def _warnings(sink: TraceSink, scrapers: Sequence[Any]) -> list[str]:
    """What the user should fix in the server's settings for a better map."""
    out = []
    if sink.requests and sink.without_instance and len(scrapers) + bool(sink.instances) > 1:
        out.append(
            f"{sink.without_instance} of {sink.requests} requests carry no instance id, so they cannot be matched "
            "to one server's series; set OTEL_RESOURCE_ATTRIBUTES=service.instance.id=<host:port> on each vLLM"
        )
    elif sink.requests and sink.without_instance == sink.requests:
        out.append(
            "spans carry no instance id (set OTEL_RESOURCE_ATTRIBUTES=service.instance.id=<host:port> on vLLM); "
            "they are matched to the only series there is"
        )
    for sc in scrapers:
        if sc.scrapes == 0:
            out.append(f"no scrape of {sc.instance} succeeded: {sc.last_error}")
        elif sc.kind == "agent" and not sc.gpu_models:
            out.append(f"{sc.instance} served no GPU series (is it a node agent or dcgm-exporter with GPUs?)")
        elif sc.kind == "vllm" and not sc.model.get("hidden_size"):
            out.append(
                f"the model served at {sc.instance} has no readable config.json here; pass --model-config "
                "for the roofline"
            )
    return out
