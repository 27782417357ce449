"""`collect`: vLLM `llm_request` spans (protobuf and JSON) -> a valid bundle."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bottleneck_map.bundle import BundleWriter, read_bundle
from bottleneck_map.ingest.collect import TraceSink, collect_meta, finish, otlp_app
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.ingest.otlp import OtlpError, decode, request_row, spans_from_json
from bottleneck_map.validate import validate_bundle

S = 1_000_000_000
T0 = 1_763_900_000 * S  # a Unix time in ns


def vllm_attributes(i: int) -> dict:
    """The attributes vLLM's OutputProcessor.do_tracing sets (vllm/tracing.py SpanAttributes)."""
    return {
        "gen_ai.latency.time_to_first_token": 0.25 + 0.01 * i,
        "gen_ai.latency.e2e": 1.5 + 0.1 * i,
        "gen_ai.latency.time_in_queue": 0.1,
        "gen_ai.usage.prompt_tokens": 100 + i,
        "gen_ai.usage.completion_tokens": 32,
        "gen_ai.latency.time_in_model_prefill": 0.05,
        "gen_ai.latency.time_in_model_decode": 1.2,
        "gen_ai.latency.time_in_model_inference": 1.25,
        "gen_ai.request.id": f"cmpl-{i:04d}",
        "gen_ai.response.finish_reasons": json.dumps(["length"]),
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 32,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.n": 1,
    }


def emit_vllm_spans(exporter, n: int, instance: str = "vllm-0:8000") -> None:
    """Emit spans the way vLLM does: SERVER span `llm_request` starting at arrival, ended at finish."""
    provider = TracerProvider(resource=Resource.create({"service.name": "vllm", "service.instance.id": instance}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("vllm.v1.engine.output_processor")
    for i in range(n):
        arrival = T0 + i * S
        attrs = vllm_attributes(i)
        span = tracer.start_span("llm_request", kind=SpanKind.SERVER, start_time=arrival, attributes=attrs)
        span.end(end_time=arrival + round(attrs["gen_ai.latency.e2e"] * 1e9) + 1_000_000)
    provider.shutdown()


def protobuf_body(n: int, instance: str = "vllm-0:8000") -> bytes:
    mem = InMemorySpanExporter()
    emit_vllm_spans(mem, n, instance)
    return encode_spans(mem.get_finished_spans()).SerializeToString()


def _any(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def json_body(n: int, instance: str = "vllm-1:8000", start: int = 0) -> bytes:
    """OTLP/JSON as the OpenTelemetry Collector's otlphttp exporter writes it."""
    spans = []
    for i in range(start, start + n):
        attrs = vllm_attributes(i)
        arrival = T0 + i * S
        spans.append(
            {
                "traceId": f"{i + 1:032x}",
                "spanId": f"{i + 1:016x}",
                "name": "llm_request",
                "kind": 2,
                "startTimeUnixNano": str(arrival),
                "endTimeUnixNano": str(arrival + round(attrs["gen_ai.latency.e2e"] * 1e9)),
                "attributes": [{"key": k, "value": _any(v)} for k, v in attrs.items()],
                "status": {},
            }
        )
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "vllm"}},
                        {"key": "service.instance.id", "value": {"stringValue": instance}},
                    ]
                },
                "scopeSpans": [{"scope": {"name": "vllm"}, "spans": spans}],
            }
        ]
    }
    return json.dumps(doc).encode()


def test_protobuf_and_json_decode_to_the_same_rows():
    pb = [request_row(s) for s in decode(protobuf_body(3), "application/x-protobuf")]
    js = [request_row(s) for s in decode(json_body(3, instance="vllm-0:8000"), "application/json")]
    keys = ("request_id", "instance", "prompt_tokens", "output_tokens", "max_tokens", "finish_reason")
    times = ("arrival_ns", "queued_ns", "first_scheduled_ns", "first_token_ns", "finished_ns")
    for a, b in zip(pb, js, strict=True):
        assert {k: a[k] for k in keys + times} == {k: b[k] for k in keys + times}


def test_lifecycle_is_rebuilt_from_vllm_latency_attributes():
    (span,) = spans_from_json(json_body(1))
    row = request_row(span)
    arrival = T0
    assert row["request_id"] == "cmpl-0000"
    assert row["instance"] == "vllm-1:8000"
    assert row["arrival_ns"] == arrival
    assert row["first_token_ns"] == arrival + 250_000_000  # + TTFT
    assert row["finished_ns"] == arrival + 1_500_000_000  # + E2E
    assert row["first_scheduled_ns"] == row["first_token_ns"] - 50_000_000  # - prefill
    assert row["queued_ns"] == row["first_scheduled_ns"] - 100_000_000  # - queue time
    assert (row["prompt_tokens"], row["output_tokens"], row["max_tokens"]) == (100, 32, 32)
    assert row["finish_reason"] == "length"
    assert row["trace_id"] == f"{1:032x}"


def test_v0_spans_without_prefill_time_count_queue_from_arrival():
    doc = json.loads(json_body(1))
    attrs = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    attrs[:] = [a for a in attrs if "model_prefill" not in a["key"] and "model_decode" not in a["key"]]
    (span,) = spans_from_json(json.dumps(doc).encode())
    row = request_row(span)
    assert row["queued_ns"] == T0
    assert row["first_scheduled_ns"] == T0 + 100_000_000


def test_other_spans_are_not_requests():
    doc = json.loads(json_body(1))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] = "POST /v1/completions"
    (span,) = spans_from_json(json.dumps(doc).encode())
    assert request_row(span) is None


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "application/json", "hex id"),
        (b"\xff\xff\xff\xff", "application/x-protobuf", "protobuf"),
        (b"{}", "text/plain", "unsupported Content-Type"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(body, ctype, message):
    with pytest.raises(OtlpError, match=message):
        decode(body, ctype)


@pytest.fixture
def receiver(tmp_path: Path):
    writer = BundleWriter(tmp_path / "bundle", collect_meta(), flush_interval_s=0.2)
    sink = TraceSink(writer)
    server = UvicornServer(otlp_app(sink)).start()
    started = time.time_ns()
    yield server, writer, sink, started
    server.stop()
    writer.close()


def test_receiver_round_trips_spans_into_a_valid_bundle(receiver, tmp_path):
    server, writer, sink, started = receiver
    # protobuf, through the OpenTelemetry SDK's own OTLP/HTTP exporter (what vLLM uses for http/protobuf)
    emit_vllm_spans(OTLPSpanExporter(endpoint=f"{server.url}/v1/traces"), 4)
    with httpx.Client() as client:
        r = client.post(f"{server.url}/v1/traces", content=json_body(3), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        # gzip-compressed protobuf, as exporters with compression=gzip send it
        r = client.post(
            f"{server.url}/v1/traces",
            content=gzip.compress(protobuf_body(2, instance="vllm-2:8000")),
            headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
        )
        assert r.status_code == 200
        # a bad payload: 400 naming the problem, and nothing recorded so far is lost
        r = client.post(f"{server.url}/v1/traces", content=b"garbage", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.text
        # an exporter retry of the same spans is not counted twice
        r = client.post(f"{server.url}/v1/traces", content=json_body(3), headers={"content-type": "application/json"})
        assert r.status_code == 200
        r = client.post(
            f"{server.url}/v1/traces", content=json_body(1, start=7), headers={"content-type": "application/json"}
        )
        assert r.status_code == 200
    server.stop()
    summary = finish(writer, sink, started, prometheus=None, instances=None, step_s=None)
    assert summary["requests"] == 4 + 3 + 2 + 1

    report = validate_bundle(tmp_path / "bundle")
    assert report.valid, report.errors
    b = read_bundle(tmp_path / "bundle")
    assert b.meta["clock"]["kind"] == "unix"
    assert b.meta["capabilities"]["steps"] is False
    req = b.requests
    assert len(req) == 10 and req["request_id"].is_unique
    assert set(req["instance"]) == {"vllm-0:8000", "vllm-1:8000", "vllm-2:8000"}
    # the same vLLM id from two instances is kept apart, suffixed with the instance
    assert {"cmpl-0000", "cmpl-0000@vllm-1:8000", "cmpl-0000@vllm-2:8000"} <= set(req["request_id"])
    ttft = (req["first_token_ns"] - req["arrival_ns"]) / 1e9
    expected = req["request_id"].str.slice(5, 9).astype(int) * 0.01 + 0.25
    assert (ttft - expected).abs().max() < 1e-6


def test_collect_cli_runs_for_a_duration(tmp_path):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["collect", "--out", str(out), "--port", "0", "--duration", "0.5"])
    assert result.exit_code == 0, result.output
    assert validate_bundle(out).valid
    bad = CliRunner().invoke(app, ["collect", "--out", str(out), "--port", "99999"])
    assert bad.exit_code == 2 and "--port" in bad.output


def test_ingested_bundle_is_analysed_and_says_what_it_cannot_tell(tmp_path):
    analyzer = pytest.importorskip("bottleneck_map.analyzer.api", reason="analyzer not installed")
    writer = BundleWriter(tmp_path / "b", collect_meta())
    sink = TraceSink(writer)
    sink.add(spans_from_json(json_body(20)))
    finish(writer, sink, time.time_ns(), prometheus=None, instances=None, step_s=None)
    result = analyzer.analyze(tmp_path / "b")
    assert {"prefill_compute", "decode_memory_bandwidth", "host_overhead"} <= {u.cls for u in result.unreachable}


def test_stage_child_spans_fill_exact_stamps_and_inconsistent_ones_are_left_out():
    from bottleneck_map.ingest.otlp import Span, apply_stage_spans

    (root,) = spans_from_json(json_body(1))
    row = request_row(root)
    ms = 1_000_000

    def child(name, a, b):
        return Span(root.trace_id, f"{len(name):016x}", root.span_id, name, T0 + a * ms, T0 + b * ms)

    out = apply_stage_spans(row, [child("tokenize", 1, 3), child("queue", 5, 90), child("stream", 260, 1600)])
    assert (out["tokenize_start_ns"], out["tokenize_end_ns"]) == (T0 + ms, T0 + 3 * ms)
    assert out["queued_ns"] == T0 + 5 * ms
    assert (out["first_byte_ns"], out["last_byte_ns"]) == (T0 + 260 * ms, T0 + 1600 * ms)
    # a tokenize span ending after the first schedule, or a stream before the first token, is ignored
    bad = apply_stage_spans(row, [child("tokenize", 1, 250), child("stream", 10, 20)])
    assert bad.get("tokenize_start_ns") is None
    assert bad.get("first_byte_ns") is None


def test_collect_cli_ingests_otlp_json_files(tmp_path):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    lines = tmp_path / "spans.jsonl"  # the OpenTelemetry Collector's file exporter: one request per line
    lines.write_text(json_body(3, start=0).decode() + "\n" + json_body(2, start=3).decode() + "\n")
    doc = tmp_path / "spans.json"
    doc.write_text(json.dumps(json.loads(json_body(1, start=5)), indent=2))
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["collect", "--out", str(out), "--no-receive", "--otlp-file", str(lines),
                                 "--otlp-file", str(doc)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert validate_bundle(out).valid and len(read_bundle(out).requests) == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json_body(1).decode() + "\n{broken\n")
    r = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "c"), "--no-receive", "--otlp-file", str(bad)])
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output
