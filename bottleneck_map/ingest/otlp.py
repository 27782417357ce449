"""OTLP trace ingest: vLLM ``llm_request`` spans -> bundle request rows.

vLLM (``vllm/v1/engine/output_processor.py``, ``do_tracing``; and the older
``vllm/engine/llm_engine.py``) emits one SERVER span named ``llm_request`` per
finished request. It starts at the request's arrival (wall clock) and carries
latencies in seconds as attributes (``vllm/tracing.py`` ``SpanAttributes``):

=====================================  ==========================================
``gen_ai.request.id``                  request id
``gen_ai.usage.prompt_tokens``         prompt length
``gen_ai.usage.completion_tokens``     generated tokens
``gen_ai.request.max_tokens``          requested limit
``gen_ai.latency.time_to_first_token`` arrival -> first token
``gen_ai.latency.e2e``                 arrival -> finished
``gen_ai.latency.time_in_queue``       queued -> first scheduled
``gen_ai.latency.time_in_model_prefill``  first scheduled -> first token (v1)
``gen_ai.latency.time_in_model_decode``   first token -> last token (v1)
``gen_ai.latency.time_in_model_forward``  forward time (v0)
``gen_ai.latency.time_in_model_execute``  execute time (v0)
=====================================  ==========================================

Both OTLP/HTTP encodings are decoded: binary protobuf
(``ExportTraceServiceRequest``) and OTLP/JSON (camelCase keys, hex ids, int64
as strings). Times in the rows are Unix nanoseconds (the bundle's clock is
``unix``).
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPAN_NAME = "llm_request"

REQUEST_ID = "gen_ai.request.id"
PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = ("gen_ai.response.finish_reasons", "gen_ai.response.finish_reason")
TTFT = "gen_ai.latency.time_to_first_token"
E2E = "gen_ai.latency.e2e"
QUEUE = "gen_ai.latency.time_in_queue"
PREFILL = "gen_ai.latency.time_in_model_prefill"
DECODE = "gen_ai.latency.time_in_model_decode"
FORWARD = "gen_ai.latency.time_in_model_forward"
EXECUTE = "gen_ai.latency.time_in_model_execute"

# Resource attributes naming the instance a span came from, in order of preference.
INSTANCE_KEYS = ("service.instance.id", "service.name")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class OtlpError(ValueError):
    """A payload that is not a valid OTLP trace export; the message says why."""


class TooLarge(OtlpError):
    """A body, or its decompressed form, over a size limit (HTTP 413)."""


@dataclass(frozen=True)
class Span:
    """One decoded span, whatever the wire encoding."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0
    status_message: str = ""


# -- decoding ----------------------------------------------------------------


_INFLATE_CHUNK = 256 * 1024


def decompress(body: bytes, content_encoding: str | None, max_bytes: int | None = None) -> bytes:
    """The body decoded by its Content-Encoding (gzip, deflate or none).

    Inflation stops as soon as the output passes ``max_bytes`` (TooLarge), so a
    small compression bomb costs at most ``max_bytes`` of memory."""
    enc = (content_encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise OtlpError(f"unsupported Content-Encoding {content_encoding!r} (gzip, deflate or none)")
    limit = max_bytes if max_bytes is not None else 1 << 62
    out: list[bytes] = []
    total = 0
    data = body
    try:
        while True:  # one gzip member (or the one zlib stream) per pass
            d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
            while not d.eof:
                piece = d.decompress(data, min(_INFLATE_CHUNK, limit - total + 1))
                total += len(piece)
                if total > limit:
                    raise TooLarge(f"{enc} body inflates to more than {limit} bytes")
                out.append(piece)
                if not piece and not d.unconsumed_tail and not d.eof:
                    raise OtlpError(f"body is not valid {enc} data: it ends before the end of the stream")
                data = d.unconsumed_tail
            data = d.unused_data
            if enc != "gzip" or not data.strip(b"\0"):
                break
    except zlib.error as exc:
        raise OtlpError(f"body is not valid {enc} data: {exc}") from exc
    return b"".join(out)


def decode(body: bytes, content_type: str | None) -> list[Span]:
    """Spans of an OTLP/HTTP trace export body, by its Content-Type."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == PROTOBUF:
        return spans_from_protobuf(body)
    if ctype == JSON:
        return spans_from_json(body)
    raise OtlpError(f"unsupported Content-Type {content_type!r}; OTLP/HTTP uses {PROTOBUF} or {JSON}")


def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def spans_from_protobuf(body: bytes) -> list[Span]:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise OtlpError(f"body is not a protobuf ExportTraceServiceRequest: {exc}") from exc
    spans = []
    for rs in req.resource_spans:
        resource = {kv.key: _pb_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        start_ns=int(s.start_time_unix_nano),
                        end_ns=int(s.end_time_unix_nano),
                        attributes={kv.key: _pb_value(kv.value) for kv in s.attributes},
                        resource=resource,
                        status_code=int(s.status.code),
                        status_message=s.status.message,
                    )
                )
    return spans


MAX_VALUE_DEPTH = 16  # nesting of array and kvlist attribute values


def _json_value(v: Any, where: str, depth: int = 0) -> Any:
    if not isinstance(v, Mapping) or not v:
        return None
    if depth > MAX_VALUE_DEPTH:
        raise OtlpError(f"{where}: value nested deeper than {MAX_VALUE_DEPTH} levels")
    key, val = next(iter(v.items()))
    try:
        if key == "stringValue":
            return str(val)
        if key == "boolValue":
            return bool(val)
        if key == "intValue":
            return int(val)
        if key == "doubleValue":
            return float(val)
        if key == "bytesValue":
            return base64.b64decode(val)
        if key == "arrayValue":
            values = _list(_obj(val, f"{where}.arrayValue").get("values"), f"{where}.arrayValue.values")
            return [_json_value(x, where, depth + 1) for x in values]
        if key == "kvlistValue":
            return _json_attrs(_obj(val, f"{where}.kvlistValue").get("values"), where, depth + 1)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, OtlpError):
            raise
        raise OtlpError(f"{where}: bad {key} {_short(val)}") from exc
    raise OtlpError(f"{where}: unknown AnyValue kind {_short(key)}")


def _short(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    """An optional JSON object: absent or null is empty, anything else but an object is an error."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise OtlpError(f"{where} must be an object, not {type(v).__name__} {_short(v)}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    """An optional JSON array: absent or null is empty, anything else but an array is an error."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise OtlpError(f"{where} must be an array, not {type(v).__name__} {_short(v)}")
    return v


def _json_attrs(items: Any, where: str, depth: int = 0) -> dict[str, Any]:
    out = {}
    for kv in _list(items, f"{where}.attributes"):
        if not isinstance(kv, Mapping) or "key" not in kv:
            raise OtlpError(f"{where}: attribute without a key: {_short(kv)}")
        out[str(kv["key"])] = _json_value(kv.get("value"), f"{where} attribute {_short(kv['key'])}", depth)
    return out


def _json_id(value: Any, nbytes: int, where: str) -> str:
    """OTLP/JSON ids are lowercase hex (not base64 as in protobuf's JSON mapping)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise OtlpError(f"{where}: {_short(value)} is not a hex id")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise OtlpError(f"{where}: {_short(value)} is not a hex id") from None
    if len(raw) != nbytes:
        raise OtlpError(f"{where}: {_short(value)} is not {nbytes} bytes")
    return raw.hex()


def _json_ns(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise OtlpError(f"{where}: {_short(value)} is not an integer of nanoseconds")
    if isinstance(value, float) and not value.is_integer():
        raise OtlpError(f"{where}: {_short(value)} is not an integer of nanoseconds")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise OtlpError(f"{where}: {_short(value)} is not an integer of nanoseconds") from None


def spans_from_json(body: bytes) -> list[Span]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OtlpError(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise OtlpError("body is not valid OTLP/JSON: nested too deeply") from None
    if not isinstance(doc, Mapping):
        raise OtlpError("body must be a JSON object with resourceSpans")
    spans = []
    for i, rs in enumerate(_list(doc.get("resourceSpans"), "resourceSpans")):
        if not isinstance(rs, Mapping):
            raise OtlpError(f"resourceSpans[{i}] is not an object")
        res = _obj(rs.get("resource"), f"resourceSpans[{i}].resource")
        resource = _json_attrs(res.get("attributes"), f"resourceSpans[{i}].resource")
        for j, ss in enumerate(_list(rs.get("scopeSpans"), f"resourceSpans[{i}].scopeSpans")):
            sw = f"resourceSpans[{i}].scopeSpans[{j}]"
            for k, s in enumerate(_list(_obj(ss, sw).get("spans"), f"{sw}.spans")):
                where = f"{sw}.spans[{k}]"
                if not isinstance(s, Mapping):
                    raise OtlpError(f"{where} is not an object")
                status = _obj(s.get("status"), f"{where}.status")
                spans.append(
                    Span(
                        trace_id=_json_id(s.get("traceId"), 16, f"{where}.traceId"),
                        span_id=_json_id(s.get("spanId"), 8, f"{where}.spanId"),
                        parent_span_id=_json_id(s.get("parentSpanId"), 8, f"{where}.parentSpanId") or None,
                        name=str(s.get("name", "")),
                        start_ns=_json_ns(s.get("startTimeUnixNano"), f"{where}.startTimeUnixNano"),
                        end_ns=_json_ns(s.get("endTimeUnixNano"), f"{where}.endTimeUnixNano"),
                        attributes=_json_attrs(s.get("attributes"), where),
                        resource=resource,
                        status_code=_status_code(status.get("code", 0)),
                        status_message=str(status.get("message", "")),
                    )
                )
    return spans


def _status_code(code: Any) -> int:
    names = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
    if isinstance(code, str) and code in names:
        return names[code]
    try:
        return int(code)
    except (TypeError, ValueError, OverflowError):
        return 0


# -- spans -> request rows ------------------------------------------------------


def _seconds_ns(attrs: Mapping[str, Any], key: str, where: str) -> int | None:
    """A latency attribute in seconds as ns; absent or not a number: unmeasured (None). A negative
    or non-finite value is an error: the lifecycle built from it could not be stored."""
    v = attrs.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    ns = f * 1e9
    if not math.isfinite(ns) or ns < 0:
        raise OtlpError(f"{where}: attribute {key} is {v!r}, not a finite non-negative number of seconds")
    return round(ns)


def _int(attrs: Mapping[str, Any], key: str, where: str) -> int | None:
    """A count attribute; absent or not a number: None. A negative or non-finite count is an error."""
    v = attrs.get(key)
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        raise OtlpError(f"{where}: attribute {key} is {v!r}, not a count")
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None
    if n < 0:
        raise OtlpError(f"{where}: attribute {key} is {n}, a negative count")
    return n


def _finish_reason(attrs: Mapping[str, Any]) -> str | None:
    for key in FINISH_REASONS:
        v = attrs.get(key)
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except (ValueError, RecursionError):  # not JSON (or absurdly nested): the text itself
                return v
        if isinstance(v, list):
            return str(v[0]) if v else None
        return str(v)
    return None


def instance_of(span: Span, keys: tuple[str, ...] = INSTANCE_KEYS) -> str | None:
    for key in keys:
        v = span.resource.get(key)
        if v and not (key == "service.name" and str(v).startswith("unknown_service")):
            return str(v)
    return None


def request_row(span: Span, instance_keys: tuple[str, ...] = INSTANCE_KEYS) -> dict[str, Any] | None:
    """The bundle request row of a vLLM ``llm_request`` span (None for other spans).

    The lifecycle is rebuilt from the span start (arrival) and the latency
    attributes: first token = arrival + TTFT, finished = arrival + E2E (span end
    when absent), first scheduled = first token - prefill time (v1) or arrival +
    queue time (v0, where queue time starts at arrival), queued = first scheduled
    - queue time. Each stamp is kept between its neighbours; what the span does
    not say stays null. A span whose lifecycle cannot be stored (start not a
    positive time, end before start, a negative or non-finite latency, a negative
    count) raises OtlpError naming the span and the attribute.
    """
    if span.name != SPAN_NAME:
        return None
    a = span.attributes
    rid = str(a.get(REQUEST_ID) or span.span_id)
    where = f"llm_request span {span.span_id or '(no id)'} (request {_short(rid)})"
    arrival = span.start_ns
    if arrival <= 0:
        raise OtlpError(f"{where}: start time {arrival} is not a positive Unix time in ns")
    if span.end_ns < arrival:
        raise OtlpError(f"{where}: ends {arrival - span.end_ns} ns before it starts")
    ttft, e2e = _seconds_ns(a, TTFT, where), _seconds_ns(a, E2E, where)
    queue, prefill = _seconds_ns(a, QUEUE, where), _seconds_ns(a, PREFILL, where)
    first_token = arrival + ttft if ttft is not None else None
    finished = arrival + e2e if e2e is not None else span.end_ns
    if first_token is not None and finished is not None:
        first_token = min(first_token, finished)
    scheduled = queued = None
    if first_token is not None and prefill is not None:
        scheduled = max(arrival, first_token - prefill)
        if queue is not None:
            queued = max(arrival, scheduled - queue)
    elif queue is not None:
        queued = arrival
        scheduled = arrival + queue
        upper = first_token if first_token is not None else finished
        if upper is not None:
            scheduled = min(scheduled, upper)
    error = span.status_message or ("error" if span.status_code == 2 else None)
    return {
        "request_id": rid,
        "instance": instance_of(span, instance_keys),
        "trace_id": span.trace_id or None,
        "finish_reason": _finish_reason(a),
        "error": error if span.status_code == 2 else None,
        "prompt_tokens": _int(a, PROMPT_TOKENS, where),
        "output_tokens": _int(a, COMPLETION_TOKENS, where),
        "max_tokens": _int(a, MAX_TOKENS, where),
        "arrival_ns": arrival,
        "queued_ns": queued,
        "first_scheduled_ns": scheduled,
        "first_token_ns": first_token,
        "finished_ns": finished,
        "scheduled_ns": [scheduled] if scheduled is not None else None,
    }


# Child spans bottleneck-map's own engine emits under ``llm_request`` (vLLM emits none of these):
# their start and end are exact lifecycle stamps the latency attributes cannot carry.
STAGE_SPANS: dict[str, tuple[str, str | None]] = {
    "tokenize": ("tokenize_start_ns", "tokenize_end_ns"),
    "queue": ("queued_ns", None),
    "stream": ("first_byte_ns", "last_byte_ns"),
}
_BEFORE_SCHEDULED = ("arrival_ns", "tokenize_start_ns", "tokenize_end_ns", "queued_ns", "first_scheduled_ns")


def apply_stage_spans(row: dict[str, Any], children: list[Span]) -> dict[str, Any]:
    """Fill lifecycle stamps from stage child spans; a stage whose times would break the
    lifecycle order is left out."""
    order = {name: i for i, name in enumerate(("queue", "tokenize", "stream"))}  # the queue stamp bounds tokenize
    for child in sorted(children, key=lambda c: order.get(c.name, len(order))):
        fields = STAGE_SPANS.get(child.name)
        if fields is None or child.end_ns < child.start_ns:
            continue
        trial = dict(row)
        trial[fields[0]] = child.start_ns
        if fields[1] is not None:
            trial[fields[1]] = child.end_ns
        if child.name == "stream":
            ok = trial.get("first_token_ns") is not None and child.start_ns >= trial["first_token_ns"]
        else:
            stamps = [trial[k] for k in _BEFORE_SCHEDULED if trial.get(k) is not None]
            ok = stamps == sorted(stamps)
        if ok:
            row = trial
    return row


def response_model(spans: list[Span]) -> str | None:
    for s in spans:
        if s.name == SPAN_NAME and s.attributes.get(RESPONSE_MODEL):
            return str(s.attributes[RESPONSE_MODEL])
    return None
