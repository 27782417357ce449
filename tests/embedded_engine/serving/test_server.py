"""`serve`: the OpenAI API (official client), errors, disconnects, /metrics, traces, bundle.

The module's server runs both ways: the engine in its own process (the default) and in a
thread of the HTTP process (``engine_process=False``, a model loaded here)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle

CONFIG = EngineConfig(device="cpu", max_num_seqs=16, num_kv_blocks=256, max_model_len=512)


@pytest.fixture(scope="module", params=["process", "thread"])
def server(request, tiny, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("serve") / "bundle"
    spans = None
    if request.param == "process":
        served = build_server(
            model="tiny", engine_config=CONFIG, instance="test-0", bundle=bundle, measure_device=False, threads=1
        )
    else:
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        served = build_server(
            model="tiny",
            loaded=tiny,
            engine_config=CONFIG,
            instance="test-0",
            bundle=bundle,
            tracer_provider=provider,
            measure_device=False,
        )
        assert not served.engine_process
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol  # as `serve` runs it
    http.start()
    yield http, served, spans, bundle
    http.stop()
    served.close()
    assert read_bundle(bundle).closed


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0)


def wait_idle(served, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (snap := served.snapshot()).unfinished or snap.delivering:
        assert time.monotonic() < deadline, "engine did not go idle"
        time.sleep(0.02)
    return snap


def records(served, bundle: Path):
    wait_idle(served)
    time.sleep(0.1)  # the detached-request completion runs on the engine's loop
    served.flush()
    return read_bundle(bundle).requests.set_index("request_id")


def test_models_and_health(server, client):
    http = server[0]
    # first-use costs were paid before serving (warm_up): anyio's backend, the chat template
    assert "anyio._backends._asyncio" in sys.modules
    assert server[1].state.loop.tokenizer._compiled is not None
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(http.url + "/health").status_code == 200


def test_completion_non_streaming(client):
    r = client.completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=7, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert isinstance(r.choices[0].text, str) and r.choices[0].text


def test_chat_non_streaming_with_max_completion_tokens(client):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_completion_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_streaming_matches_non_streaming_and_reports_usage(client):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_continuous_usage_stats_put_running_usage_in_every_chunk(server):
    body = {"model": "tiny", "prompt": "usage", "max_tokens": 4, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    with httpx.stream("POST", server[0].url + "/v1/completions", json=body) as r:
        docs = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    counts = [d["usage"]["completion_tokens"] for d in docs]
    assert counts == sorted(counts) and counts[-1] == 4 and all("usage" in d for d in docs)


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "count"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="tiny", prompt="seeded", max_tokens=10, temperature=1.0, top_p=0.9, seed=1234)
    a = client.completions.create(**kw, extra_body={"ignore_eos": True}).choices[0].text
    b = client.completions.create(**kw, extra_body={"ignore_eos": True}).choices[0].text
    assert a == b


def test_stop_string_ends_the_output_before_it(server, client):
    base = client.completions.create(
        model="tiny", prompt="stop here", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    text = base.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    r = client.completions.create(
        model="tiny", prompt="stop here", max_tokens=20, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop)]
    streamed = client.completions.create(
        model="tiny", prompt="stop here", max_tokens=20, temperature=0, stop=stop, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    req = records(server[1], server[3])
    assert req.loc[r.id, "finish_reason"] == "stop" and req.loc[chunks[-1].id, "finish_reason"] == "stop"
    assert req.loc[r.id, "output_tokens"] < 20


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [
        ("/v1/completions", b"{not json", 400, None, "Invalid JSON"),
        ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model", "does not exist"),
        ("/v1/completions", {"model": "tiny", "prompt": "word " * 600}, 400, "prompt", "maximum context length"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -3}, 400, "max_tokens", "at least 1"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens", "absurd"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 600}, 400, "max_tokens", "maximum context"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 129}, 400, "n", "[1, 128]"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature", "temperature"),
        ("/v1/completions", {"model": "tiny"}, 400, "prompt", "prompt"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages", "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages", "messages"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, path, body, status, param, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server[0].url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and words in err["message"]
    assert client.completions.create(model="tiny", prompt="still up", max_tokens=2).usage.completion_tokens >= 1


def test_official_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="tiny", prompt="x", best_of=3)


def test_client_disconnect_aborts_and_frees_kv_blocks(server):
    http, served, _, bundle = server

    async def go() -> str:
        async with httpx.AsyncClient(base_url=http.url, timeout=30) as c:
            body = {"model": "tiny", "prompt": "go on forever", "max_tokens": 400, "stream": True, "ignore_eos": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                rid = r.headers["x-request-id"]
                n = 0
                async for line in r.aiter_lines():
                    n += line.startswith("data:")
                    if n == 3:
                        break  # leaving the block closes the connection mid-stream
        return rid

    rid = asyncio.run(go())
    req = records(served, bundle)
    assert req.loc[rid, "finish_reason"] == "abort"
    assert req.loc[rid, "output_tokens"] < 400
    snap = wait_idle(served)
    assert snap.kv_blocks_used == 0 and snap.kv_blocks_free == snap.num_kv_blocks == 256


def test_bundle_records_streaming_timestamps(server, client):
    http, served, _, bundle = server
    stream = client.completions.create(
        model="tiny", prompt="stamp me", max_tokens=8, stream=True, extra_body={"ignore_eos": True}
    )
    rid = None
    for chunk in stream:
        rid = chunk.id
    req = records(served, bundle)
    row = req.loc[rid]
    assert row["instance"] == "test-0" and row["workload_class"] == "completion"
    assert len(row["token_ns"]) == 8
    assert len(row["delivered_ns"]) >= 1
    assert row["first_token_ns"] <= row["first_byte_ns"] <= row["last_byte_ns"]
    assert row["last_byte_ns"] >= row["token_ns"][-1]
    assert row["tokenize_start_ns"] <= row["tokenize_end_ns"] <= row["queued_ns"]
    report = validate_bundle(bundle)
    assert report.valid, report.errors


def test_a_pipelined_request_arrives_when_its_bytes_are_read(server):
    """Two requests in one write on one connection: the second waits in h11's buffer until the
    first's response is complete, but its arrival is when both were read."""
    http, served, _, bundle = server
    host, port = http.host, http.port

    def request(prompt: str) -> bytes:
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 30, "ignore_eos": True}).encode()
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request("pipelined one") + request("pipelined two"))
        got = b""
        while got.count(b'"usage"') < 2:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
    ids = re.findall(rb'"id":"(cmpl-[0-9a-f]+)"', got)
    req = records(served, bundle)
    first, second = req.loc[ids[0].decode()], req.loc[ids[1].decode()]
    assert second["first_token_ns"] > first["finished_ns"]  # it really waited for the first
    assert second["arrival_ns"] - first["arrival_ns"] < (first["finished_ns"] - first["arrival_ns"]) / 2


def test_metrics_use_vllm_names_and_count_requests(server, client):
    http = server[0]

    def scrape() -> dict:
        out = {}
        for fam in text_string_to_metric_families(httpx.get(http.url + "/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    labels = (("engine", "0"), ("model_name", "tiny"))
    before = scrape()
    client.completions.create(model="tiny", prompt="count me", max_tokens=4, extra_body={"ignore_eos": True})
    wait_idle(server[1])
    after = scrape()
    for name in (
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
    ):
        assert after[(name, labels)] - before.get((name, labels), 0) == 1, name
    itl = "vllm:inter_token_latency_seconds_count"
    assert after[(itl, labels)] - before.get((itl, labels), 0) == 3
    gen = "vllm:generation_tokens_total"
    assert after[(gen, labels)] - before.get((gen, labels), 0) == 4
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:iteration_tokens_total_count",
    ):
        assert (name, labels) in after, name
    assert ("vllm:time_to_first_token_seconds_bucket", (*labels[:1], ("le", "0.001"), labels[1])) in after
    assert ("vllm:inter_token_latency_seconds_bucket", (*labels[:1], ("le", "80.0"), labels[1])) in after


def test_traceparent_becomes_the_parent_of_the_request_span(server, client):
    http, served, spans, bundle = server
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = client.completions.create(
        model="tiny", prompt="traced", max_tokens=3, extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"}
    )
    req = records(served, bundle)
    assert req.loc[r.id, "trace_id"] == trace_id
    if spans is None:
        return  # the engine process's spans go out over OTLP: test_server_otlp.py
    span = next(s for s in spans.get_finished_spans() if s.attributes.get("gen_ai.request.id") == r.id)
    assert span.name == "llm_request"
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == parent
    assert span.attributes["gen_ai.usage.completion_tokens"] == 3


def test_metrics_include_the_agent_when_it_samples_in_process(tmp_path):
    served = build_server(
        model="tiny",
        engine_config=EngineConfig(device="cpu", max_num_seqs=4, num_kv_blocks=64, max_model_len=256),
        instance="agent-0",
        bundle=tmp_path / "bundle",
        agent=True,
        agent_interval=0.1,
        measure_device=False,
        threads=1,
    )
    assert served.engine_process and served.sampler.watch_pid == served.state.loop.process.pid
    try:
        with UvicornServer(served.app) as http:
            time.sleep(0.5)
            text = httpx.get(http.url + "/metrics").text
            r = httpx.post(http.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200
    finally:
        served.close()
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert {"vllm:num_requests_running", "bmap_host_cpu_utilization_ratio", "bmap_process_cpu_ratio"} <= names
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.closed and bundle.meta["capabilities"]["samples"] is True
    samples = bundle.samples
    assert len(samples) >= 2 and (samples["instance"] == "agent-0").all()
    assert len(bundle.requests) == 1 and len(bundle.steps) >= 2  # the engine process's rows, same bundle
    assert validate_bundle(tmp_path / "bundle").valid


def test_a_failing_engine_step_fails_its_requests_and_health(tiny, monkeypatch):
    served = build_server(
        model="tiny",
        loaded=tiny,
        engine_config=EngineConfig(device="cpu", max_num_seqs=4, num_kv_blocks=64, max_model_len=256),
        instance="broken-0",
        measure_device=False,
    )
    engine = served.state.engine

    def broken_step():
        raise RuntimeError("device fell off the bus")

    monkeypatch.setattr(engine, "step", broken_step)
    try:
        with UvicornServer(served.app) as http:
            r = httpx.post(http.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3})
            assert r.status_code == 500 and "device fell off the bus" in r.json()["error"]["message"]
            assert httpx.get(http.url + "/health").status_code == 503
            again = httpx.post(http.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3})
            assert again.status_code == 503 and again.json()["error"]["type"] == "ServiceUnavailableError"
    finally:
        served.close()
