"""`serve` against hostile and careless clients: no request, however formed, stops the engine for
the others; every refusal is a 4xx in OpenAI's error shape; afterwards the server is idle again
(no running or waiting request, every KV block free) and still answers."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.limits import ServeLimits
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle

NUM_KV_BLOCKS = 128
CONFIG = EngineConfig(device="cpu", max_num_seqs=8, num_kv_blocks=NUM_KV_BLOCKS, max_model_len=256)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("hostile") / "bundle"
    served = build_server(
        model="tiny", engine_config=CONFIG, instance="hostile-0", bundle=bundle, measure_device=False, threads=1
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol
    http.start()
    yield http, served, bundle
    http.stop()
    served.close()


def wait_idle(served, timeout: float = 20.0):
    import time

    deadline = time.monotonic() + timeout
    while (snap := served.snapshot()).unfinished or snap.delivering:
        assert time.monotonic() < deadline, f"engine did not go idle: {snap}"
        time.sleep(0.02)
    return snap


def assert_idle_and_serving(http, served) -> None:
    snap = wait_idle(served)
    assert snap.running == 0 and snap.waiting == 0
    assert snap.kv_blocks_used == 0 and snap.kv_blocks_free == NUM_KV_BLOCKS
    assert httpx.get(http.url + "/health").status_code == 200
    gauges = {
        s.name: s.value
        for fam in text_string_to_metric_families(httpx.get(http.url + "/metrics").text)
        for s in fam.samples
        if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    }
    assert gauges == {"vllm:num_requests_running": 0, "vllm:num_requests_waiting": 0, "vllm:kv_cache_usage_perc": 0}
    r = httpx.post(
        http.url + "/v1/completions",
        json={"model": "tiny", "prompt": "still here", "max_tokens": 3, "ignore_eos": True},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


HOSTILE = [
    math.nan, math.inf, -math.inf, 1e-300, -1e-300, 1e300, -1e300, 0, -1, 0.5, 1, 2.5,
    2**63, -(2**63) - 1, 2**64, 10**30, "1", True, [], {},
]  # fmt: skip
FIELDS = [
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "seed", "max_tokens", "stop", "stop_token_ids", "n", "ignore_eos",
]  # fmt: skip


async def _fuzz(url: str) -> list[tuple[str, object, int, dict]]:
    """Every hostile value in every sampling field (non-streaming and streaming), while well-formed
    streaming clients run beside them; returns (field, value, status, body) of the fuzzed requests
    and checks that every well-formed request completed."""
    done = asyncio.Event()
    good: list[str] = []

    async def well_formed(client: httpx.AsyncClient) -> None:
        body = {"model": "tiny", "prompt": "a steady client", "max_tokens": 8, "ignore_eos": True, "stream": True}
        body["temperature"] = 0.8
        while not done.is_set():
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                text = (await r.aread()).decode()
            assert r.status_code == 200, text
            assert '"finish_reason":"length"' in text and text.rstrip().endswith("data: [DONE]"), text
            good.append(text)

    results: list[tuple[str, object, int, dict]] = []
    gate = asyncio.Semaphore(8)

    async def hostile(client: httpx.AsyncClient, field: str, value: object, stream: bool) -> None:
        body = {"model": "tiny", "prompt": "fuzz", "max_tokens": 3, "temperature": 1.0, field: value}
        if stream:
            body["stream"] = True
        async with gate:
            content = json.dumps(body, allow_nan=True)  # Python's json writes (and reads) NaN and Infinity
            r = await client.post(
                url + "/v1/completions", content=content, headers={"content-type": "application/json"}
            )
        doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {"raw": r.text}
        results.append((field, value, r.status_code, doc))

    async with httpx.AsyncClient(timeout=60) as client:
        steady = [asyncio.create_task(well_formed(client)) for _ in range(4)]
        await asyncio.gather(
            *(hostile(client, f, v, stream) for f in FIELDS for v in HOSTILE for stream in (False, True))
        )
        done.set()
        await asyncio.gather(*steady)
    assert len(good) >= 4
    return results


@pytest.mark.slow
def test_fuzzed_sampling_fields_never_stop_the_engine(server):
    http, served, bundle = server
    results = asyncio.run(_fuzz(http.url))
    for field, value, status, doc in results:
        assert status in (200, 400), (field, value, status, doc)
        if status == 400:
            err = doc["error"]
            assert err["param"] == field and err["type"] == "invalid_request_error", (field, value, doc)
            assert field in err["message"]
    accepted = {(f, repr(v)) for f, v, status, _ in results if status == 200}
    # the edges the sampler computes are served, not refused
    for field, value in [("temperature", 1e-300), ("top_p", 1e-300), ("seed", -1), ("min_p", 1), ("max_tokens", 1)]:
        assert (field, repr(value)) in accepted, (field, value)
    for field, value in [("temperature", math.nan), ("top_p", math.inf), ("seed", 2**63), ("top_k", 10**30)]:
        assert (field, repr(value)) not in accepted, (field, value)
    assert ("repetition_penalty", repr(1e-300)) not in accepted
    assert_idle_and_serving(http, served)
    served.flush()
    requests = read_bundle(bundle).requests
    assert set(requests["finish_reason"]) <= {"length", "stop", "abort"}
    assert validate_bundle(bundle).valid


def test_request_with_nan_json_constants_gets_a_field_error(server):
    http, _, _ = server
    for field, raw in [("temperature", "NaN"), ("top_p", "Infinity"), ("presence_penalty", "-Infinity")]:
        content = f'{{"model": "tiny", "prompt": "x", "max_tokens": 2, "{field}": {raw}}}'
        r = httpx.post(http.url + "/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == field
        assert "finite" in r.json()["error"]["message"]


def test_limits_reject_their_own_bad_values():
    for kw in ({"max_body_bytes": 0}, {"header_timeout_s": 0}, {"max_connections": 0}, {"max_prompt_chars": 0}):
        with pytest.raises(ValueError):
            ServeLimits(**kw)
