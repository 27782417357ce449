"""vLLM's metric families on ``serve``: every series vLLM's Grafana dashboards read is served, the
families vLLM always exports exist (at zero where a feature does not apply), and the values."""

from __future__ import annotations

import ast
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR
from bottleneck_map.embedded_engine.model.model_config import ModelConfig
from bottleneck_map.embedded_engine.serving import vllm_metrics as vm
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer

FIXTURE = json.loads((Path(__file__).with_name("vllm_dashboard_metrics.json")).read_text())
VLLM_BUCKETS = (
    Path(__file__).resolve().parents[3] / ".venv-vllm/lib/python3.11/site-packages/vllm/v1/metrics/buckets.py"
)
CONFIG = EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256)


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def families(text: str) -> dict:
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def value(rows: list, name: str, **labels) -> float:
    hits = [s.value for s in rows if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture(scope="module", params=["process", "thread"])
def served_after_load(request, tiny):
    """A server (either engine layout) after a streamed chat, a completion, a one-token request and a
    refused request; yields its /metrics text and its URL."""
    kw = {"loaded": tiny} if request.param == "thread" else {"threads": 1}
    served = build_server(model="tiny", engine_config=CONFIG, instance="m-0", measure_device=False, **kw)
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    try:
        with httpx.Client(base_url=http.url, timeout=60) as c:
            body = {"model": "tiny", "max_tokens": 4, "ignore_eos": True}
            r = c.post(
                "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            )
            assert r.status_code == 200
            assert c.post("/v1/completions", json={**body, "prompt": "the same prompt twice"}).status_code == 200
            assert c.post("/v1/completions", json={**body, "prompt": "the same prompt twice"}).status_code == 200
            assert c.post("/v1/completions", json={**body, "prompt": "one", "max_tokens": 1}).status_code == 200
            assert c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": -1}).status_code == 400
            deadline = time.monotonic() + 30
            while (snap := served.snapshot()).unfinished or snap.delivering:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.2)  # the last rows reach the metrics with the engine's next message
            yield c.get("/metrics").text, http.url
    finally:
        http.stop()
        served.close()


def test_every_series_the_dashboards_read_is_served(served_after_load):
    rows = samples(served_after_load[0])
    names = {s.name for s in rows}
    for dashboard, wanted in FIXTURE["dashboards"].items():
        missing = sorted(set(wanted) - names)
        assert not missing, f"{dashboard}: {missing}"
    for name, selectors in FIXTURE["selected_labels"].items():
        for label, values in selectors.items():
            have = {s.labels.get(label) for s in rows if s.name == name}
            assert set(values) <= have, (name, label, have)
    assert not set(FIXTURE["not_served"]) & names  # an option-only family would need its option here
    # the dashboards' $model_name comes from label_values(model_name): the served model only
    assert {s.labels["model_name"] for s in rows if "model_name" in s.labels} == {"tiny"}


def test_vllm_families_with_values_after_load(served_after_load):
    rows = samples(served_after_load[0])
    fams = families(served_after_load[0])
    lab = {"model_name": "tiny", "engine": "0"}
    assert value(rows, "vllm:request_success_total", finished_reason="length", **lab) == 4
    assert value(rows, "vllm:request_success_total", finished_reason="error", **lab) == 0
    assert value(rows, "vllm:engine_sleep_state", sleep_state="awake", **lab) == 1
    assert value(rows, "vllm:engine_sleep_state", sleep_state="discard_all", **lab) == 0
    assert value(rows, "vllm:num_requests_waiting_by_reason", reason="deferred", **lab) == 0
    info = [s for s in rows if s.name == "vllm:cache_config_info"]
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["num_gpu_blocks"] == "128" and info[0].labels["block_size"] == "16"
    assert value(rows, "vllm:admission_rejections_total", model_name="tiny", reason="max_num_queued_reqs") == 0
    assert value(rows, "vllm:request_params_n_count", **lab) == 4
    assert value(rows, "vllm:request_params_n_bucket", le="1.0", **lab) == 4
    assert value(rows, "vllm:request_max_num_generation_tokens_sum", **lab) == 4 + 4 + 4 + 1
    assert value(rows, "vllm:request_num_preemptions_count", **lab) == 4
    # prompt tokens: computed plus cached; the repeated prompt hits the prefix cache only in whole blocks
    computed = value(rows, "vllm:prompt_tokens_by_source_total", source="local_compute", **lab)
    cached = value(rows, "vllm:prompt_tokens_by_source_total", source="local_cache_hit", **lab)
    assert computed + cached == value(rows, "vllm:prefix_cache_queries_total", **lab)
    assert (
        cached
        == value(rows, "vllm:prompt_tokens_cached_total", **lab)
        == value(rows, "vllm:prefix_cache_hits_total", **lab)
    )
    assert value(rows, "vllm:prompt_tokens_cached_by_source_total", source="device", **lab) == cached
    assert value(rows, "vllm:request_prefill_kv_computed_tokens_sum", **lab) == computed
    # the one-token request records 0 s per output token, as vLLM does
    assert value(rows, "vllm:request_time_per_output_token_seconds_count", **lab) == 4
    assert value(rows, "vllm:request_time_per_output_token_seconds_bucket", le="0.01", **lab) >= 1
    for name in ("flops", "read_bytes", "write_bytes"):
        assert value(rows, f"vllm:estimated_{name}_per_gpu_total", **lab) > 0
    # the API server's families, as prometheus-fastapi-instrumentator labels them
    assert value(rows, "http_requests_total", handler="/v1/completions", method="POST", status="2xx") == 3
    assert value(rows, "http_requests_total", handler="/v1/completions", method="POST", status="4xx") == 1
    assert value(rows, "http_request_duration_seconds_count", handler="/v1/chat/completions", method="POST") == 1
    assert not [s for s in rows if s.name == "http_requests_total" and s.labels["handler"] in ("/metrics", "/health")]
    assert fams["http_request_duration_seconds"].type == "histogram"
    assert value(rows, "process_cpu_seconds_total") > 0 and "python_gc_objects_collected_total" in {
        s.name for s in rows
    }


def test_head_answers_like_get_without_a_body(served_after_load):
    host, port = served_after_load[1].split("//")[1].rsplit(":", 1)
    for path in ("/metrics", "/health", "/v1/models"):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, sep, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and sep and body == b"", path
    assert "content-length" in head.decode().lower()


def _exposition(m: vm.VllmMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_families_vllm_always_exports_exist_before_any_request():
    m = vm.VllmMetrics("m", max_model_len=64, waiting=lambda: 3)
    rows = samples(_exposition(m))
    lab = {"model_name": "m", "engine": "0"}
    for reason in vm.FINISH_REASONS:
        assert value(rows, "vllm:request_success_total", finished_reason=reason, **lab) == 0
    assert value(rows, "vllm:num_requests_waiting_by_reason", reason="capacity", **lab) == 3
    for name in ("external_prefix_cache_hits", "mm_cache_queries", "prompt_tokens_cached", "estimated_flops_per_gpu"):
        assert value(rows, f"vllm:{name}_total", **lab) == 0
    for source in vm.CACHE_HIT_SOURCES:
        assert value(rows, "vllm:prompt_tokens_cached_by_source_total", source=source, **lab) == 0
    assert "vllm:cache_config_info" not in {s.name for s in rows}  # only with the engine's facts


def test_request_counters_and_the_one_token_request():
    m = vm.VllmMetrics("m", max_model_len=64)
    base = {"finish_reason": "stop", "arrival_ns": 0, "queued_ns": 1, "first_scheduled_ns": 2}
    m.observe_request(
        {
            **base,
            "prompt_tokens": 10,
            "cached_prompt_tokens": 4,
            "output_tokens": 1,
            "first_token_ns": 10**9,
            "finished_ns": 10**9,
            "preempted_ns": [5, 6],
            "token_ns": [10**9],
        }
    )
    m.observe_request({**base, "prompt_tokens": 3, "cached_prompt_tokens": 0, "output_tokens": 3,
                       "first_token_ns": 10**9, "finished_ns": 10**9 + 4 * 10**7, "token_ns": []})  # fmt: skip
    m.observe_request({**base, "finish_reason": "rejected", "prompt_tokens": 99, "output_tokens": 0})
    rows = samples(_exposition(m))
    lab = {"model_name": "m", "engine": "0"}
    assert value(rows, "vllm:prompt_tokens_by_source_total", source="local_compute", **lab) == 9
    assert value(rows, "vllm:prompt_tokens_by_source_total", source="local_cache_hit", **lab) == 4
    assert value(rows, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer", **lab) == 0
    assert value(rows, "vllm:prompt_tokens_cached_total", **lab) == 4
    assert value(rows, "vllm:request_prefill_kv_computed_tokens_sum", **lab) == 9
    assert value(rows, "vllm:request_num_preemptions_sum", **lab) == 2
    assert value(rows, "vllm:request_num_preemptions_bucket", le="1.0", **lab) == 1
    assert value(rows, "vllm:request_max_num_generation_tokens_sum", **lab) == 4
    assert value(rows, "vllm:request_params_n_sum", **lab) == 2
    tpot = "vllm:request_time_per_output_token_seconds"
    assert value(rows, f"{tpot}_count", **lab) == 2
    assert value(rows, f"{tpot}_sum", **lab) == pytest.approx(0.02)  # 0 for the one-token request
    assert value(rows, f"{tpot}_bucket", le="0.01", **lab) == 1


def _config(**kw) -> ModelConfig:
    base = json.loads((PRESETS_DIR / "tiny" / "config.json").read_text())
    return ModelConfig.from_hf_dict({**base, **kw}, "t")


def test_step_cost_counts_weights_attention_and_kv():
    cfg = _config(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=4, vocab_size=32)  # fmt: skip
    cost = vm.StepCost.from_model(cfg, dtype_bytes=2)
    per_layer = 8 * (8 + 2 * 4) + 8 * 8 + 3 * 8 * 16  # qkv, o, gate/up/down
    assert cost.layer_weights == 2 * per_layer and cost.kv_bytes_per_token == 2 * 2 * 4 * 2
    # a 3-token prefill chunk ending at 5 tokens and one decode at 10
    flops, read, written = cost.estimate([3, 1], [5, 10])
    pairs = (3 * 2 + 6) + (1 * 9 + 1)
    assert flops == 2 * 4 * 2 * per_layer + 2 * 2 * 32 * 8 + 4 * 2 * 8 * pairs
    assert read == (2 * per_layer + 32 * 8 + 4 * 8) * 2 + 15 * 32  # weights, 4 embedding rows, 15 tokens' K/V
    assert written == 4 * 32
    assert cost.estimate([], []) == (0.0, 0.0, 0.0)


@pytest.mark.skipif(not VLLM_BUCKETS.is_file(), reason="vLLM's source is not installed beside the project")
def test_buckets_are_vllms():
    tree = ast.parse(VLLM_BUCKETS.read_text())
    theirs = {
        node.targets[0].id if isinstance(node, ast.Assign) else node.target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Tuple)
        and (getattr(node, "target", None) or node.targets[0]).id.endswith("_BUCKETS")
    }  # fmt: skip
    assert tuple(vm.TTFT_BUCKETS) == tuple(theirs["TIME_TO_FIRST_TOKEN_BUCKETS"])
    assert tuple(vm.ITL_BUCKETS) == tuple(theirs["INTER_TOKEN_LATENCY_BUCKETS"])
    assert tuple(vm.REQUEST_LATENCY_BUCKETS) == tuple(theirs["REQUEST_LATENCY_BUCKETS"])
    assert tuple(vm.ITERATION_TOKEN_BUCKETS) == tuple(theirs["ITERATION_TOKENS_BUCKETS"])
    assert tuple(vm.REQUEST_PARAMS_N_BUCKETS) == tuple(theirs["REQUEST_PARAMS_N_BUCKETS"])
    assert tuple(vm.REQUEST_NUM_PREEMPTIONS_BUCKETS) == tuple(theirs["REQUEST_NUM_PREEMPTIONS_BUCKETS"])


def test_a_registry_per_server_keeps_two_servers_apart():
    a, b = CollectorRegistry(), CollectorRegistry()
    vm.VllmMetrics("a", max_model_len=32, registry=a)
    vm.VllmMetrics("b", max_model_len=32, registry=b)  # no duplicate-timeseries error
    assert b'model_name="a"' in generate_latest(a) and b'model_name="a"' not in generate_latest(b)
