"""Traces: a workload run yields a valid bundle with every lifecycle stamp, and OTel spans with vLLM's keys."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bottleneck_map.bundle import BundleWriter, new_meta, read_bundle
from bottleneck_map.embedded_engine.core.inject import Injection
from bottleneck_map.embedded_engine.core.tracing import TraceSink, otel_provider_from_env
from bottleneck_map.embedded_engine.workloads.runner import run_workload
from bottleneck_map.embedded_engine.workloads.workload import LengthDist, WorkloadSpec, build_workload, word_pool
from bottleneck_map.validate import validate_bundle

VLLM_KEYS = (
    "gen_ai.request.id",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.latency.time_in_queue",
    "gen_ai.latency.time_to_first_token",
    "gen_ai.latency.e2e",
    "gen_ai.latency.time_in_model_prefill",
    "gen_ai.latency.time_in_model_decode",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "gen_ai.request.top_p",
    "gen_ai.response.model",
)
STAMPS = (
    "arrival_ns",
    "tokenize_start_ns",
    "tokenize_end_ns",
    "queued_ns",
    "first_scheduled_ns",
    "first_token_ns",
    "finished_ns",
    "first_byte_ns",
    "last_byte_ns",
)


@pytest.fixture
def otel():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _run(tmp_path, make_engine, tiny, provider=None, n=12, prompt=(20, 90), output=(4, 24), rate=200.0, **engine_kw):
    engine_kw.setdefault("num_kv_blocks", 24)
    engine_kw.setdefault("max_model_len", 256)
    engine = make_engine(**engine_kw)
    meta = new_meta("test", engine=engine.config.to_meta(), model=tiny.config.to_meta(engine.dtype))
    writer = BundleWriter(tmp_path / "b", meta)
    engine.sink = TraceSink(writer, provider, model_name="tiny", instance="e0")
    spec = WorkloadSpec(num_requests=n, request_rate=rate, seed=1).with_lengths(
        LengthDist("uniform", *prompt), LengthDist("uniform", *output), 32
    )
    reqs = build_workload(spec, word_pool(tiny.tokenizer))
    too_long = reqs[0].__class__("req-long", 0.0, "chat", 4, " word" * 400)
    result = run_workload(engine, [*reqs, too_long])
    engine.close()
    writer.close()
    return engine, result, read_bundle(tmp_path / "b")


def test_bundle_is_valid_and_every_stamp_is_present(tmp_path, make_engine, tiny):
    engine, result, bundle = _run(tmp_path, make_engine, tiny)
    report = validate_bundle(bundle.path)
    assert report.valid, report.errors
    req, steps = bundle.requests, bundle.steps
    assert len(req) == 13 and result.num_rejected == 1
    done = req[req.finish_reason != "rejected"]
    for col in STAMPS:
        assert done[col].notna().all(), col
    for _, r in done.iterrows():
        assert len(r.token_ns) == r.output_tokens
        assert len(r.delivered_ns) >= 1 and r.delivered_ns[-1] == r.last_byte_ns
        assert r.first_byte_ns >= r.first_token_ns and r.last_byte_ns >= r.finished_ns
        assert len(r.scheduled_ns) >= 1 and r.scheduled_ns[0] == r.first_scheduled_ns
        assert r.workload_class in ("chat", "rag", "agentic")
    rejected = req[req.finish_reason == "rejected"].iloc[0]
    assert "max_model_len" in rejected.error and rejected.output_tokens == 0
    assert rejected[["first_scheduled_ns", "first_token_ns", "first_byte_ns"]].isna().all()
    # steps: ids known, per-seq lists aligned, phase split consistent
    known = set(req.request_id)
    for _, s in steps.iterrows():
        assert set(s.request_ids) <= known
        assert len(s.query_lens) == len(s.request_ids) == len(s.is_prefill) == len(s.context_lens)
        assert s.num_prefill_seqs + s.num_decode_seqs == len(s.request_ids)
        assert s.kv_blocks_used + s.kv_blocks_free == 24
        assert s.forward_ns > 0 and s.start_ns <= s.end_ns
    # every generated token of every request is accounted for by a step that ran it
    sampled = sum(int(r.output_tokens) for _, r in done.iterrows())
    assert result.output_tokens == sampled
    assert steps.num_preempted.sum() == engine.stats.num_preemptions


def test_preemptions_are_traced(tmp_path, make_engine, tiny):
    engine, _, bundle = _run(
        tmp_path,
        make_engine,
        tiny,
        n=8,
        num_kv_blocks=12,
        max_model_len=192,
        prompt=(8, 24),
        output=(48, 64),
        rate=float("inf"),
    )
    req = bundle.requests
    assert engine.stats.num_preemptions > 0
    pre = req[req.preempted_ns.map(len) > 0]
    assert len(pre) > 0
    assert (pre.preempted_ns.map(len) == pre.resumed_ns.map(len)).all()
    assert (pre.recomputed_tokens > 0).any()
    assert validate_bundle(bundle.path).valid


def test_otel_spans_carry_vllm_attributes(tmp_path, make_engine, tiny, otel):
    provider, exporter = otel
    _, _, bundle = _run(tmp_path, make_engine, tiny, provider=provider, n=4)
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "llm_request"]
    assert len(roots) == 5
    ok = [s for s in roots if s.attributes.get("bottleneck_map.finish_reason") != "rejected"]
    for root in ok:
        for key in VLLM_KEYS:
            assert key in root.attributes, key
        children = {s.name for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
        assert children == {"tokenize", "queue", "prefill", "decode", "stream"}
        a = root.attributes
        assert a["gen_ai.latency.e2e"] >= a["gen_ai.latency.time_to_first_token"] >= a["gen_ai.latency.time_in_queue"]
    # times are Unix ns converted from the bundle clock, and the bundle row names the trace
    clock = bundle.meta["clock"]
    req = bundle.requests.set_index("request_id")
    root = ok[0]
    arrival = req.loc[root.attributes["gen_ai.request.id"], "arrival_ns"]
    assert root.start_time == arrival - clock["origin_monotonic_ns"] + clock["origin_unix_ns"]
    assert req.loc[root.attributes["gen_ai.request.id"], "trace_id"] == format(root.context.trace_id, "032x")
    # vLLM v1 meanings: queue is queued -> first scheduled, prefill first scheduled -> first token
    for span in ok:
        row = req.loc[span.attributes["gen_ai.request.id"]]
        a = span.attributes
        assert a["gen_ai.latency.time_in_queue"] == (row["first_scheduled_ns"] - row["queued_ns"]) / 1e9
        assert a["gen_ai.latency.time_to_first_token"] == (row["first_token_ns"] - row["arrival_ns"]) / 1e9


def test_parent_traceparent_is_honoured(make_engine, otel):
    provider, exporter = otel
    engine = make_engine(num_kv_blocks=16)
    engine.sink = TraceSink(None, provider, model_name="tiny")
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    engine.add_request("p", [5, 6, 7, 8], traceparent=tp)
    engine.run_until_done()
    root = next(s for s in exporter.get_finished_spans() if s.name == "llm_request")
    assert format(root.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(root.parent.span_id, "016x") == "b7ad6b7169203331"


def test_otlp_export_only_when_configured(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert otel_provider_from_env() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    provider = otel_provider_from_env()
    assert provider is not None
    provider.shutdown()


def test_prompt_text_only_when_opted_in(tmp_path, make_engine, tiny):
    _, _, bundle = _run(tmp_path, make_engine, tiny, n=3)
    assert bundle.requests.prompt_text.isna().all() and bundle.requests.output_text.isna().all()


def test_injected_faults_cost_time_where_planted(tmp_path, make_engine, tiny):
    engine = make_engine(num_kv_blocks=24, max_model_len=256, injection=Injection(step_host_ms=5.0))
    engine.sink = TraceSink(BundleWriter(tmp_path / "i", new_meta("test")), None)
    engine.generate([[5, 6, 7, 8, 9]], None)
    engine.sink.writer.close()
    steps = read_bundle(tmp_path / "i").steps
    assert (steps.postprocess_ns >= 5_000_000).all()


def test_swap_preemptions_record_bytes_and_time(tmp_path, make_engine, tiny):
    engine, _, bundle = _run(
        tmp_path,
        make_engine,
        tiny,
        n=8,
        num_kv_blocks=12,
        max_model_len=192,
        prompt=(8, 24),
        output=(48, 64),
        rate=float("inf"),
        preemption_mode="swap",
        swap_space_gib=0.01,
    )
    steps, req = bundle.steps, bundle.requests
    assert engine.stats.num_preemptions > 0
    out, back = steps.swap_out_bytes.sum(), steps.swap_in_bytes.sum()
    assert out > 0 and back == out
    assert req.swapped_bytes.sum() == out + back  # each request counts its bytes both ways
    assert (steps.swap_ns.notna() == ((steps.swap_out_bytes + steps.swap_in_bytes) > 0)).all()
    assert (req.recomputed_tokens == 0).all()
    assert validate_bundle(bundle.path).valid
