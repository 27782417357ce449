"""`collect`'s receiver on well-formed bodies of the wrong shape: 400 with the reason, never 500,
and a refused batch leaves no trace (its spans are not taken as seen)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import pytest
from factories import otlp_json, otlp_span
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bottleneck_map.bundle import BundleWriter, read_bundle
from bottleneck_map.ingest.collect import TraceSink, collect_meta, finish, otlp_app
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle

JSON = {"content-type": "application/json"}
PROTOBUF = {"content-type": "application/x-protobuf"}
I64 = 2**63


def one(**attrs) -> dict:
    return otlp_json([otlp_span(0, **attrs)])


def with_span(**fields) -> dict:
    return otlp_json([{**otlp_span(0), **fields}])


def nested_value(depth: int) -> dict:
    v: dict = {"stringValue": "x"}
    for _ in range(depth):
        v = {"kvlistValue": {"values": [{"key": "k", "value": v}]}}
    return v


WRONG_JSON = {
    "resourceSpans a number": (b'{"resourceSpans": 5}', "resourceSpans must be an array"),
    "spans a number": (b'{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}', "spans must be an array"),
    "scopeSpans item a number": (b'{"resourceSpans": [{"scopeSpans": [5]}]}', "scopeSpans[0] must be an object"),
    "resource a string": (b'{"resourceSpans": [{"resource": "r"}]}', "resource must be an object"),
    "attributes an object": (json.dumps(with_span(attributes={"a": 1})).encode(), "attributes must be an array"),
    "status a number": (json.dumps(with_span(status=5)).encode(), "status must be an object"),
    "arrayValue a number": (json.dumps(one(x={"arrayValue": 3})).encode(), "arrayValue must be an object"),
    "e2e Infinity": (
        json.dumps(one(**{"gen_ai.latency.e2e": {"doubleValue": float("inf")}})).encode(),
        "gen_ai.latency.e2e is inf",
    ),
    "ttft -Infinity": (
        json.dumps(one(**{"gen_ai.latency.time_to_first_token": {"doubleValue": float("-inf")}})).encode(),
        "time_to_first_token is -inf",
    ),
    "ttft 1e300 s": (
        json.dumps(one(**{"gen_ai.latency.time_to_first_token": {"doubleValue": 1e300}})).encode(),
        "not a finite non-negative number",
    ),
    "negative e2e": (
        json.dumps(one(**{"gen_ai.latency.e2e": {"doubleValue": -1.0}})).encode(),
        "not a finite non-negative number",
    ),
    "deep JSON": (b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "deep attribute value": (json.dumps(one(x=nested_value(40))).encode(), "nested deeper than"),
    "start beyond int64": (
        json.dumps(with_span(startTimeUnixNano=str(I64 + 5), endTimeUnixNano=str(I64 + 6))).encode(),
        "arrival_ns",
    ),
    "start 1e400": (json.dumps(with_span(startTimeUnixNano="1e400")).encode(), "not an integer of nanoseconds"),
    "start a float": (json.dumps(with_span(startTimeUnixNano=1.5)).encode(), "not an integer of nanoseconds"),
    "start zero": (json.dumps(with_span(startTimeUnixNano="0")).encode(), "not a positive Unix time"),
    "end before start": (
        json.dumps(with_span(endTimeUnixNano=str(1_763_900_000_000_000_000 - 5))).encode(),
        "before it starts",
    ),
    "finish beyond int64": (
        json.dumps(with_span(startTimeUnixNano=str(I64 - 10), endTimeUnixNano=str(I64 - 5))).encode(),
        "does not fit int64",
    ),
    "tokens beyond int32": (
        json.dumps(one(**{"gen_ai.usage.prompt_tokens": {"intValue": str(2**40)}})).encode(),
        "prompt_tokens",
    ),
    "negative tokens": (
        json.dumps(one(**{"gen_ai.usage.completion_tokens": {"intValue": "-3"}})).encode(),
        "negative count",
    ),
    "lone surrogate id": (
        json.dumps(one(**{"gen_ai.request.id": {"stringValue": "\ud800abc"}})).encode(),
        "request_id",
    ),
    "lone surrogate finish reason": (
        json.dumps(one(**{"gen_ai.response.finish_reasons": {"stringValue": "\udc00"}})).encode(),
        "finish_reason",
    ),
    "trace id a number": (json.dumps(with_span(traceId=5)).encode(), "traceId: 5 is not a hex id"),
}


def pb_body(**span_fields) -> bytes:
    """A protobuf export request of one llm_request span; ``span_fields`` override span fields,
    ``attr_*`` set attributes (int or double by the Python type)."""
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "llm_request"
    span.start_time_unix_nano = 1_763_900_000_000_000_000
    span.end_time_unix_nano = span.start_time_unix_nano + 2_000_000_000
    for key, value in span_fields.items():
        if key.startswith("attr_"):
            kv = span.attributes.add()
            kv.key = key[5:].replace("__", ".")
            if isinstance(value, float):
                kv.value.double_value = value
            else:
                kv.value.int_value = value
        else:
            setattr(span, key, value)
    return req.SerializeToString()


WRONG_PROTOBUF = {
    "start beyond int64": (pb_body(start_time_unix_nano=2**64 - 1, end_time_unix_nano=2**64 - 1), "arrival_ns"),
    "e2e infinity": (pb_body(attr_gen_ai__latency__e2e=float("inf")), "gen_ai.latency.e2e is inf"),
    "e2e NaN": (pb_body(attr_gen_ai__latency__e2e=float("nan")), "gen_ai.latency.e2e is nan"),
    "negative queue time": (pb_body(attr_gen_ai__latency__time_in_queue=-0.5), "time_in_queue is -0.5"),
    "tokens beyond int32": (pb_body(attr_gen_ai__usage__completion_tokens=2**40), "output_tokens"),
    "start zero": (pb_body(start_time_unix_nano=0), "not a positive Unix time"),
    "truncated": (pb_body()[:-7], "not a protobuf"),
}


@pytest.fixture
def receiver(tmp_path: Path):
    writer = BundleWriter(tmp_path / "bundle", collect_meta(), flush_interval_s=0.2)
    sink = TraceSink(writer)
    with UvicornServer(otlp_app(sink)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, sink, writer, tmp_path / "bundle"
    writer.close()


def test_wrong_shapes_get_400_with_the_reason_and_record_nothing(receiver):
    client, sink, writer, path = receiver
    for name, (body, reason) in WRONG_JSON.items():
        r = client.post("/v1/traces", content=body, headers=JSON)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert reason in r.json()["message"], (name, r.text)
    for name, (body, reason) in WRONG_PROTOBUF.items():
        r = client.post("/v1/traces", content=body, headers=PROTOBUF)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert reason in r.text, (name, r.text)
    assert sink.stats() == {"spans_received": 0, "requests": 0, "other_spans": 0}
    # the receiver still works, and the bundle holds exactly what was acknowledged
    r = client.post("/v1/traces", content=json.dumps(otlp_json([otlp_span(1)])).encode(), headers=JSON)
    assert r.status_code == 200
    finish(writer, sink, time.time_ns(), prometheus=None, instances=None, step_s=None)
    assert validate_bundle(path).valid
    assert read_bundle(path).requests["request_id"].tolist() == ["cmpl-0001"]


def test_a_refused_batch_is_not_taken_as_seen_so_its_retry_is_recorded(receiver):
    client, sink, writer, path = receiver
    good = otlp_span(0)
    bad = otlp_span(1, **{"gen_ai.usage.prompt_tokens": {"intValue": str(2**40)}})
    r = client.post("/v1/traces", content=json.dumps(otlp_json([good, bad])).encode(), headers=JSON)
    assert r.status_code == 400
    message = r.json()["message"]
    assert "cmpl-0001" in message and "prompt_tokens" in message and "nothing of this batch" in message
    assert sink.requests == 0
    r = client.post("/v1/traces", content=json.dumps(otlp_json([good])).encode(), headers=JSON)  # the retry
    assert r.status_code == 200
    r = client.post("/v1/traces", content=json.dumps(otlp_json([good])).encode(), headers=JSON)  # a duplicate
    assert r.status_code == 200
    assert sink.stats()["requests"] == 1
    finish(writer, sink, time.time_ns(), prometheus=None, instances=None, step_s=None)
    assert validate_bundle(path).valid and len(read_bundle(path).requests) == 1


def test_a_finish_reason_nested_absurdly_deep_is_kept_as_text(receiver):
    client, sink, writer, path = receiver
    deep = "[" * 100_000 + "]" * 100_000
    body = json.dumps(one(**{"gen_ai.response.finish_reasons": {"stringValue": deep}})).encode()
    r = client.post("/v1/traces", content=body, headers=JSON)
    assert r.status_code == 200 and sink.requests == 1


def test_two_spans_of_one_batch_reusing_an_id_are_both_kept(tmp_path):
    from bottleneck_map.ingest.otlp import spans_from_json

    with BundleWriter(tmp_path / "b", collect_meta()) as writer:
        sink = TraceSink(writer)
        spans = spans_from_json(json.dumps(otlp_json([otlp_span(0), {**otlp_span(0), "spanId": "ab" * 8}])).encode())
        assert sink.add(spans) == 2
    assert sorted(read_bundle(tmp_path / "b").requests["request_id"]) == ["cmpl-0000", "cmpl-0000@vllm-0:8000"]


def test_an_otlp_file_with_an_unstorable_span_is_refused_naming_the_file(tmp_path):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    bad = tmp_path / "spans.json"
    bad.write_text(json.dumps(otlp_json([otlp_span(0), otlp_span(1, **{"gen_ai.latency.e2e": {"doubleValue": -2}})])))
    r = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "b"), "--no-receive", "--otlp-file", str(bad)])
    assert r.exit_code == 1 and "spans.json" in r.output and "gen_ai.latency.e2e" in r.output
    assert "Traceback" not in r.output


ODD_VALUES = [None, 5, -1, 2**64, -(2**63) - 1, 1e308, math.inf, math.nan, "x", "", [], {}, [5], {"a": 1}, True,
              "\ud800", "1e400", "ff" * 8, "9" * 30, 0.5]  # fmt: skip


def test_mutated_exports_are_recorded_or_refused_never_crash_nor_dropped_later(tmp_path):
    """Thousands of exports with fields replaced by odd values (fixed seed): each is either
    recorded whole or refused with OtlpError, and nothing recorded is dropped at flush."""
    import random
    import warnings

    from bottleneck_map.bundle import BundleWarning
    from bottleneck_map.ingest.otlp import OtlpError, decode

    rng = random.Random(7)

    def mutate(doc, rate):
        if isinstance(doc, dict):
            out = {}
            for k, v in doc.items():
                r = rng.random()
                if r < rate / 2:
                    continue
                out[k] = rng.choice(ODD_VALUES) if r < rate else mutate(v, rate)
            return out
        if isinstance(doc, list):
            return [mutate(x, rate) for x in doc] + ([rng.choice(ODD_VALUES)] if rng.random() < rate / 2 else [])
        return rng.choice(ODD_VALUES) if rng.random() < rate / 2 else doc

    base = otlp_json([otlp_span(i) for i in range(3)])
    pb = pb_body()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BundleWarning)
        with BundleWriter(tmp_path / "b", collect_meta()) as writer:
            sink = TraceSink(writer)
            for i in range(1500):
                body, ctype = json.dumps(mutate(base, 0.02 + 0.1 * (i % 3))).encode(), JSON["content-type"]
                if i % 5 == 0:  # a protobuf body with a few bytes changed
                    raw = bytearray(pb)
                    for _ in range(rng.randint(1, 4)):
                        raw[rng.randrange(len(raw))] = rng.randrange(256)
                    body, ctype = bytes(raw), PROTOBUF["content-type"]
                try:
                    sink.add(decode(body, ctype))
                except OtlpError:
                    pass
            recorded = sink.requests
    assert recorded > 0 and len(read_bundle(tmp_path / "b").requests) == recorded
    assert validate_bundle(tmp_path / "b").valid
