"""``serve`` against a real vLLM on the same checkpoint (needs ``make vllm-venv``): the same
request gives the same completion and the same token log-probabilities, prompt tokens included.

The built-in ``default`` preset is exported as a float32 Hugging Face checkpoint; both servers run
it on the CPU. Greedy text and tokens must be identical; log-probabilities agree within 1e-3
(both compute in float32, through different kernels).
"""

from __future__ import annotations

import httpx
import pytest
from vllm_oracle import vllm_marks, vllm_server

from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.model.export import export_preset
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer

pytestmark = vllm_marks(900)
TOL = 1e-3


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[str, str]:
    work = tmp_path_factory.mktemp("parity")
    checkpoint = export_preset("default", work / "default")
    served = build_server(
        model=str(checkpoint),
        served_model_name="default",
        engine_config=EngineConfig(device="cpu", dtype="float32", block_size=32, max_num_seqs=8, max_model_len=4096),
        instance="parity-0",
        measure_device=False,
        threads=1,
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    try:
        with vllm_server(checkpoint, otlp_port=None, log=work / "vllm.log") as vllm_url:
            yield http.url, vllm_url
    finally:
        http.stop()
        served.close()


def _choice(url: str, body: dict) -> dict:
    r = httpx.post(url + "/v1/completions", json={"model": "default", "temperature": 0, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def _same_logprobs(ours: dict, theirs: dict) -> None:
    assert ours["tokens"] == theirs["tokens"]
    assert ours["text_offset"] == theirs["text_offset"]
    for a, b in zip(ours["token_logprobs"], theirs["token_logprobs"], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a == pytest.approx(b, abs=TOL)
    for a, b in zip(ours["top_logprobs"], theirs["top_logprobs"], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys()
            assert [a[k] for k in a] == pytest.approx([b[k] for k in a], abs=TOL)


def test_echo_with_logprobs_scores_the_prompt_as_vllm(both):
    ours_url, vllm_url = both
    body = {"prompt": "The quick brown fox jumps over the lazy dog because", "max_tokens": 6, "logprobs": 2}
    body.update(echo=True, ignore_eos=True)
    ours, theirs = _choice(ours_url, body), _choice(vllm_url, body)
    assert ours["text"] == theirs["text"]
    _same_logprobs(ours["logprobs"], theirs["logprobs"])


def test_lm_eval_loglikelihood_request_as_vllm(both):
    ours_url, vllm_url = both
    ids = [101, 2057, 318, 1600, 44, 7, 900, 12, 3000, 8]
    body = {"prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "seed": 1234}
    ours, theirs = _choice(ours_url, body), _choice(vllm_url, body)
    _same_logprobs(ours["logprobs"], theirs["logprobs"])
