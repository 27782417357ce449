"""Parallel sampling (``n`` > 1) on ``serve``: n choices in one response (whole and streamed), the
prompt's KV blocks shared through the prefix cache, seeds per choice, usage counting the prompt once."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.core.sequence import SamplingParams
from bottleneck_map.embedded_engine.serving.parallel import child_params
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer

CONFIG = EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256, block_size=16)
PROMPT = "a prompt long enough to fill two whole blocks of sixteen tokens, so that the sequences " * 2


def test_child_params_give_each_sequence_its_own_seed():
    p = SamplingParams(temperature=1.0, seed=7)
    assert [c.seed for c in child_params(p, 3)] == [7, 8, 9]
    assert child_params(SamplingParams(), 2) == [SamplingParams()] * 2
    with pytest.raises(ValueError, match="seed"):
        child_params(SamplingParams(seed=(1 << 63) - 1), 2)


@pytest.fixture(scope="module", params=["process", "thread"])
def served(request, tiny, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("parallel") / "bundle"
    kw = {"loaded": tiny} if request.param == "thread" else {"threads": 1}
    s = build_server(model="tiny", engine_config=CONFIG, instance="n-0", bundle=bundle, measure_device=False, **kw)
    http = UvicornServer(s.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    yield http.url, s, bundle
    http.stop()
    s.close()


def _idle(s) -> None:
    deadline = time.monotonic() + 30
    while (snap := s.snapshot()).unfinished or snap.delivering:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_n_choices_share_the_prompt_and_follow_their_seeds(served):
    url, s, bundle = served
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "ignore_eos": True, "temperature": 1.0, "seed": 11}
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/completions", json={**body, "n": 3, "logprobs": 1}).json()
        single = [c.post("/v1/completions", json={**body, "seed": 11 + i}).json() for i in range(3)]
    assert [ch["index"] for ch in r["choices"]] == [0, 1, 2]
    # choice i is what one request with seed + i gives
    assert [ch["text"] for ch in r["choices"]] == [one["choices"][0]["text"] for one in single]
    assert all(len(ch["logprobs"]["tokens"]) == 5 and ch["finish_reason"] == "length" for ch in r["choices"])
    n_prompt = single[0]["usage"]["prompt_tokens"]
    assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 15, "total_tokens": n_prompt + 15}
    _idle(s)
    time.sleep(0.1)  # the detached-request completion runs on the engine's loop
    s.flush()
    rows = read_bundle(bundle).requests.set_index("request_id")
    children = rows.loc[[f"{i}_{r['id']}" for i in range(3)]]
    full_blocks = (n_prompt // 16) * 16
    # the first sequence computes the prompt; the others find its full blocks in the prefix cache
    assert children["cached_prompt_tokens"].tolist()[1:] == [full_blocks, full_blocks]
    assert full_blocks >= 16


def test_streamed_choices_carry_their_index(served):
    url, s, _ = served
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "n": 2,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        whole = c.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": None}).json()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    text = {0: "", 1: ""}
    reasons = {}
    for ch in chunks[:-1]:
        (choice,) = ch["choices"]
        text[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            reasons[choice["index"]] = choice["finish_reason"]
    assert reasons == {0: "length", 1: "length"}
    # greedy: both choices are the same text, and the same as the non-streamed answer's
    assert text[0] == text[1] == whole["choices"][0]["message"]["content"] == whole["choices"][1]["message"]["content"]


def test_a_bad_n_is_refused(served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=60) as c:
        for n in (0, 129, 1.5, "2"):
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "n": n})
            assert r.status_code == 400 and r.json()["error"]["param"] == "n", n


def test_a_client_that_leaves_mid_stream_aborts_every_sequence(served):
    url, s, bundle = served
    body = {"model": "tiny", "prompt": "leave early", "max_tokens": 200, "ignore_eos": True, "n": 3, "stream": True}
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        rid = r.headers["X-Request-Id"]
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    _idle(s)
    time.sleep(0.1)
    s.flush()
    rows = read_bundle(bundle).requests.set_index("request_id").loc[[f"{i}_{rid}" for i in range(3)]]
    assert rows["finish_reason"].tolist() == ["abort"] * 3 and (rows["output_tokens"] < 200).all()


def test_a_stop_string_ends_its_choice_once(served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=60) as c:
        probe = c.post("/v1/completions", json={"model": "tiny", "prompt": "stop here", "max_tokens": 12,
                                                "ignore_eos": True, "temperature": 0}).json()  # fmt: skip
        stop = probe["choices"][0]["text"][3:6]
        assert stop.strip()
        body = {"model": "tiny", "prompt": "stop here", "max_tokens": 12, "ignore_eos": True, "temperature": 0,
                "n": 2, "stop": stop, "stream": True}  # fmt: skip
        with c.stream("POST", "/v1/completions", json=body) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    ends = [ch["choices"][0]["index"] for ch in chunks if ch["choices"][0]["finish_reason"]]
    assert sorted(ends) == [0, 1]  # one finishing chunk per choice
    texts = {i: "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"][0]["index"] == i) for i in (0, 1)}
    assert texts[0] == texts[1] == probe["choices"][0]["text"].split(stop)[0]


def _histogram(text: str, name: str) -> tuple[float, float]:
    """(count, sum) of a vLLM histogram on a /metrics page."""
    got = {}
    for line in text.splitlines():
        for part in ("_count", "_sum"):
            if line.startswith(f"{name}{part}{{"):
                got[part] = float(line.rsplit(" ", 1)[1])
    return got["_count"], got["_sum"]


def test_n_is_observed_once_per_request_as_vllm(served):
    """vLLM's parent request: ``request_params_n`` observes n once, and
    ``request_max_num_generation_tokens`` the longest sequence, when the last sequence ends; the
    other series count each sequence."""
    url, s, _ = served
    body = {"model": "tiny", "prompt": "count me", "ignore_eos": True, "temperature": 1.0, "seed": 5}
    with httpx.Client(base_url=url, timeout=60) as c:
        _idle(s)
        before = c.get("/metrics").text
        c.post("/v1/completions", json={**body, "n": 3, "max_tokens": 4})
        c.post("/v1/completions", json={**body, "max_tokens": 6})
        _idle(s)
        after = c.get("/metrics").text
    delta = {}
    for name in ("vllm:request_params_n", "vllm:request_max_num_generation_tokens", "vllm:request_generation_tokens"):
        (c0, s0), (c1, s1) = _histogram(before, name), _histogram(after, name)
        delta[name] = (c1 - c0, s1 - s0)
    assert delta["vllm:request_params_n"] == (2, 3 + 1)
    assert delta["vllm:request_max_num_generation_tokens"] == (2, 4 + 6)
    assert delta["vllm:request_generation_tokens"] == (4, 3 * 4 + 6)
