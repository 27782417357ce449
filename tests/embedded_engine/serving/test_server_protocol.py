"""OpenAI request parsing, stop strings and the vLLM metric families, without a server."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.embedded_engine.serving import openai_protocol as oai
from bottleneck_map.embedded_engine.serving.vllm_metrics import (
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    VllmMetrics,
    build_1_2_5_buckets,
)


def test_stop_checker_holds_back_text_that_may_begin_a_stop_string():
    s = oai.StopChecker(["END"])
    assert s.push("hello E") == "hello"  # " E" is held: it could end in "END"
    assert s.push("N") == " "
    assert s.push("D and more") == ""
    assert s.stopped and s.text == "hello "


def test_stop_checker_flushes_everything_at_the_end_and_finds_the_earliest_stop():
    s = oai.StopChecker(["zz", "y"])
    assert s.push("abcz") == "abc"
    assert s.push("q", final=True) == "zq"
    t = oai.StopChecker(["zz", "y"])
    assert t.push("a y zz b") == "a " and t.stopped


def test_no_stop_strings_sends_at_once():
    s = oai.StopChecker([])
    assert s.push("abc") == "abc" and s.push("d") == "d" and not s.stopped


def test_completion_defaults_and_chat_max_completion_tokens():
    r = oai.parse_completion({"model": "m", "prompt": "hi"}, "m")
    assert (r.max_tokens, r.temperature, r.top_p, r.stream) == (16, 1.0, 1.0, False)
    c = oai.parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                        "max_completion_tokens": 7, "max_tokens": 3}, "m")  # fmt: skip
    assert c.max_tokens == 7 and c.messages == [{"role": "user", "content": "x"}] and c.model == "m"
    ids = oai.parse_completion({"prompt": [[1, 2, 3]], "stop": "x", "stream": True,
                                "stream_options": {"include_usage": True}}, "m")  # fmt: skip
    assert ids.prompt_token_ids == [1, 2, 3] and ids.stop == ["x"] and ids.include_usage


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "stop": [1]}, "stop"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "seed": "1"}, "seed"),
    ],
)
def test_invalid_fields_name_their_param(doc, param):
    with pytest.raises(oai.ApiError) as exc:
        oai.parse_completion(doc, "m")
    assert exc.value.param == param and exc.value.status == 400


def test_context_errors_follow_vllm():
    assert oai.context_error(10, 5, 16, "prompt") is None
    assert "leaves no room" in oai.context_error(16, None, 16, "prompt").message
    err = oai.context_error(10, 7, 16, "messages")
    assert err.param == "max_tokens" and "17 tokens (10 in the messages, 7 in the completion)" in err.message


def test_vllm_buckets():
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert TTFT_BUCKETS[0] == 0.001 and TTFT_BUCKETS[-1] == 2560.0 and len(TTFT_BUCKETS) == 22
    assert ITL_BUCKETS[0] == 0.01 and ITL_BUCKETS[-1] == 80.0 and len(ITL_BUCKETS) == 19
    assert REQUEST_LATENCY_BUCKETS[0] == 0.3 and REQUEST_LATENCY_BUCKETS[-1] == 7680.0


def test_request_and_step_observations():
    m = VllmMetrics("m", max_model_len=128, running=lambda: 3, waiting=lambda: 1, kv_usage=lambda: 0.25)
    ms = 1_000_000
    row = {
        "finish_reason": "length", "prompt_tokens": 10, "output_tokens": 3, "cached_prompt_tokens": 4,
        "max_tokens": 3, "arrival_ns": 0, "queued_ns": 1 * ms, "first_scheduled_ns": 5 * ms,
        "first_token_ns": 20 * ms, "finished_ns": 60 * ms, "token_ns": [20 * ms, 40 * ms, 60 * ms],
    }  # fmt: skip
    m.observe_request(row)
    m.observe_request({**row, "finish_reason": "rejected"})  # never reached the engine: not counted
    m.observe_step({"num_prefill_tokens": 6, "num_decode_seqs": 2, "num_preempted": 1})
    got = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            got[(s.name, s.labels.get("le"), s.labels.get("finished_reason"))] = s.value
    assert got[("vllm:num_requests_running", None, None)] == 3
    assert got[("vllm:kv_cache_usage_perc", None, None)] == 0.25
    assert got[("vllm:request_success_total", None, "length")] == 1
    assert got[("vllm:time_to_first_token_seconds_sum", None, None)] == pytest.approx(0.020)
    assert got[("vllm:request_queue_time_seconds_sum", None, None)] == pytest.approx(0.004)
    assert got[("vllm:request_prefill_time_seconds_sum", None, None)] == pytest.approx(0.015)
    assert got[("vllm:request_decode_time_seconds_sum", None, None)] == pytest.approx(0.040)
    assert got[("vllm:inter_token_latency_seconds_count", None, None)] == 2
    assert got[("vllm:inter_token_latency_seconds_bucket", "0.025", None)] == 2
    assert got[("vllm:prefix_cache_hits_total", None, None)] == 4
    assert got[("vllm:generation_tokens_total", None, None)] == 3
    assert got[("vllm:prompt_tokens_total", None, None)] == 6
    assert got[("vllm:iteration_tokens_total_count", None, None)] == 1
    assert got[("vllm:num_preemptions_total", None, None)] == 1


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--port", "70000"], 2, "--port"),
        (["--max-num-seqs", "0"], 2, "--max-num-seqs"),
        (["--preemption-mode", "fast"], 2, "--preemption-mode"),
        (["--agent-interval", "0"], 2, "--agent-interval"),
        (["--model", "/nonexistent/checkpoint", "--port", "0"], 1, "neither a built-in preset"),
    ],
)
def test_serve_cli_rejects_bad_settings_before_serving(args, code, words):
    from typer.testing import CliRunner

    from bottleneck_map.cli import app

    r = CliRunner().invoke(app, ["serve", *args])
    assert r.exit_code == code, r.output
    assert words in r.output
