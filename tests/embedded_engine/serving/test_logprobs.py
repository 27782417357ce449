"""Token log-probabilities on ``serve`` in the OpenAI shapes vLLM writes (completions and chat,
whole and streamed), and the parsing of ``logprobs`` / ``top_logprobs``."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.logprobs import LogprobsBuilder, LogprobsError, requested
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer

CONFIG = EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=128, max_model_len=256)


class Names:
    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False  # token strings keep special tokens, as vLLM's
        return {1: "a", 2: "bc", 3: "é", 4: "<s>"}[ids[0]]


def test_completion_shape_lists_the_sampled_token_and_the_top_k():
    b = LogprobsBuilder(Names(), "completion", 1)
    b.add([3, 2], [(-2.5, ((1, -0.1),)), (-0.2, ((2, -0.2),))])
    got = b.take()
    assert got == {
        "text_offset": [0, 1],
        "token_logprobs": [-2.5, -0.2],
        "tokens": ["é", "bc"],
        "top_logprobs": [{"é": -2.5, "a": -0.1}, {"bc": -0.2}],
    }
    assert b.take() is None
    b.add([1], [(-float("inf"), ())])  # the offset goes on across takes; -inf is written as -9999
    assert b.take() == {
        "text_offset": [3],
        "token_logprobs": [-9999.0],
        "tokens": ["a"],
        "top_logprobs": [{"a": -9999.0}],
    }


def test_chat_shape_lists_the_first_k_entries_with_bytes():
    b = LogprobsBuilder(Names(), "chat", 2)
    b.add([3], [(-2.5, ((1, -0.1), (2, -0.3)))])
    (item,) = b.take()["content"]
    assert item["token"] == "é" and item["bytes"] == [0xC3, 0xA9] and item["logprob"] == -2.5
    assert [(e["token"], e["logprob"]) for e in item["top_logprobs"]] == [("é", -2.5), ("a", -0.1)]
    b = LogprobsBuilder(Names(), "chat", 0)
    b.add([4], [(-0.5, ())])
    assert b.take()["content"][0]["top_logprobs"] == []


@pytest.mark.parametrize(
    ("doc", "kind", "want"),
    [
        ({}, "completion", None),
        ({"logprobs": 0}, "completion", 0),
        ({"logprobs": 5}, "completion", 5),
        ({"logprobs": False}, "chat", None),
        ({"logprobs": True}, "chat", 0),
        ({"logprobs": True, "top_logprobs": 4}, "chat", 4),
    ],
)
def test_requested(doc, kind, want):
    assert requested(doc, kind) == want


@pytest.mark.parametrize(
    ("doc", "kind", "param"),
    [
        ({"logprobs": 21}, "completion", "logprobs"),
        ({"logprobs": True}, "completion", "logprobs"),
        ({"logprobs": 2}, "chat", "logprobs"),
        ({"top_logprobs": 2}, "chat", "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "chat", "top_logprobs"),
    ],
)
def test_bad_values_name_the_field(doc, kind, param):
    with pytest.raises(LogprobsError) as exc:
        requested(doc, kind)
    assert exc.value.param == param


@pytest.fixture(scope="module", params=["process", "thread"])
def url(request, tiny):
    kw = {"loaded": tiny} if request.param == "thread" else {"threads": 1}
    served = build_server(model="tiny", engine_config=CONFIG, instance="lp-0", measure_device=False, **kw)
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    yield http.url
    http.stop()
    served.close()


def _stream(c: httpx.Client, path: str, body: dict) -> list[dict]:
    with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_completions_greedy_tokens_are_the_most_likely(url):
    body = {"model": "tiny", "prompt": "log probabilities", "max_tokens": 6, "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=url, timeout=60) as c:
        whole = c.post("/v1/completions", json={**body, "logprobs": 2}).json()["choices"][0]
        chunks = _stream(c, "/v1/completions", {**body, "logprobs": 2})
        plain = c.post("/v1/completions", json=body).json()["choices"][0]
    lp = whole["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 6 and "".join(lp["tokens"]) == whole["text"]
    for token, own, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert own == max(top.values()) == top[token] and own <= 0 and len(top) == 2
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    streamed = [ch["choices"][0]["logprobs"] for ch in chunks if ch["choices"][0]["logprobs"]]
    assert sum((s["tokens"] for s in streamed), []) == lp["tokens"]
    assert sum((s["token_logprobs"] for s in streamed), []) == pytest.approx(lp["token_logprobs"])
    assert sum((s["text_offset"] for s in streamed), []) == lp["text_offset"]
    assert plain["logprobs"] is None and plain["text"] == whole["text"]


def test_chat_logprobs_with_top_logprobs(url):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "ignore_eos": True,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    with httpx.Client(base_url=url, timeout=60) as c:
        choice = c.post("/v1/chat/completions", json=body).json()["choices"][0]
        chunks = _stream(c, "/v1/chat/completions", body)
        bad = c.post("/v1/chat/completions", json={**body, "logprobs": False})
    content = choice["logprobs"]["content"]
    assert len(content) == 4 and "".join(i["token"] for i in content) == choice["message"]["content"]
    for item in content:
        assert bytes(item["bytes"]).decode("utf-8", "replace") == item["token"]
        assert len(item["top_logprobs"]) == 3 and item["top_logprobs"][0]["logprob"] == item["logprob"]
    streamed = [
        i
        for ch in chunks
        if ch["choices"] and ch["choices"][0]["logprobs"]
        for i in ch["choices"][0]["logprobs"]["content"]
    ]
    assert [i["token"] for i in streamed] == [i["token"] for i in content]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


def test_echo_writes_the_prompt_and_scores_its_tokens(url):
    """``echo``: the prompt before the completion and, with ``logprobs``, its tokens scored (the
    first by nothing: null), then the generated ones exactly as without ``echo``. The engine's
    prompt scores are checked against transformers in ``test_engine_parity``."""
    base = {"model": "tiny", "temperature": 0, "ignore_eos": True, "prompt": "log probabilities", "max_tokens": 2}
    with httpx.Client(base_url=url, timeout=60) as c:
        plain = c.post("/v1/completions", json={**base, "logprobs": 1}).json()["choices"][0]
        echo = c.post("/v1/completions", json={**base, "logprobs": 1, "echo": True}).json()["choices"][0]
        text_only = c.post("/v1/completions", json={**base, "echo": True}).json()["choices"][0]
        streamed = _stream(c, "/v1/completions", {**base, "logprobs": 1, "echo": True})
        bad = c.post("/v1/completions", json={**base, "echo": True, "n": 2})
        vllm_field = c.post("/v1/completions", json={**base, "prompt_logprobs": 1})
    lp = echo["logprobs"]
    assert echo["text"] == text_only["text"] == "log probabilities" + plain["text"]
    assert "".join(lp["tokens"]) == echo["text"] and text_only["logprobs"] is None
    n_prompt = len(lp["tokens"]) - 2
    assert n_prompt >= 2 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for token, own, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert own <= 0 and top[token] == own and 1 <= len(top) <= 2 and max(top.values()) >= own
    assert lp["token_logprobs"][n_prompt:] == pytest.approx(plain["logprobs"]["token_logprobs"])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    chunks = [ch["choices"][0] for ch in streamed]
    assert "".join(ch["text"] for ch in chunks) == echo["text"]
    assert sum((ch["logprobs"]["token_logprobs"] for ch in chunks if ch["logprobs"]), []) == pytest.approx(
        lp["token_logprobs"], nan_ok=True
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "echo"
    assert vllm_field.status_code == 400 and vllm_field.json()["error"]["param"] == "prompt_logprobs"


def test_lm_eval_loglikelihood_request(url):
    """What lm-eval-harness' ``local-completions`` sends for a loglikelihood: token ids in a batch of
    one, ``echo``, ``logprobs: 1``, ``max_tokens: 1``; it sums ``token_logprobs[ctxlen:-1]`` and
    compares each with the top of its ``top_logprobs``."""
    ids = [5, 17, 29, 41, 53, 65]
    body = {
        "model": "tiny",
        "prompt": [ids],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "echo": True,
        "seed": 1234,
    }
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    ctxlen = 3
    continuation = lp["token_logprobs"][ctxlen:-1]
    assert len(continuation) == len(ids) - ctxlen and all(v is not None and v <= 0 for v in continuation)
    for own, top in zip(continuation, lp["top_logprobs"][ctxlen:-1], strict=True):
        assert own <= max(top.values())
