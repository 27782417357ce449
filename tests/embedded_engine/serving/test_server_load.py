"""Load: 200 concurrent streaming clients on loopback, bounded in time."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer
from bottleneck_map.validate import validate_bundle

N_CLIENTS = 200
MAX_TOKENS = 6


async def one_client(client: httpx.AsyncClient, i: int) -> tuple[int, str, int]:
    body = {
        "model": "tiny",
        "prompt": f"client {i} asks something",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text, usage, done = "", None, False
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode(), 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            doc = json.loads(data)
            if "error" in doc:
                return 500, data, 0
            if doc["choices"]:
                text += doc["choices"][0]["text"]
            if doc.get("usage"):
                usage = doc["usage"]["completion_tokens"]
    return (200 if done else 599), text, usage or 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_200_concurrent_streams_finish_without_errors_and_free_every_block(tmp_path):
    served = build_server(  # the engine in its own process, as `serve` runs it
        model="tiny",
        engine_config=EngineConfig(device="cpu", max_num_seqs=64, num_kv_blocks=512, max_model_len=256),
        instance="load-0",
        bundle=tmp_path / "bundle",
        measure_device=False,
        threads=1,
    )
    http = UvicornServer(served.app).start()

    async def run() -> list[tuple[int, str, int]]:
        limits = httpx.Limits(max_connections=N_CLIENTS, max_keepalive_connections=N_CLIENTS)
        async with httpx.AsyncClient(base_url=http.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one_client(client, i) for i in range(N_CLIENTS)))

    t0 = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - t0
    try:
        errors = [r for r in results if r[0] != 200]
        assert not errors, errors[:3]
        assert all(r[2] == MAX_TOKENS for r in results)
        assert elapsed < 120, f"200 streams took {elapsed:.1f} s"
        deadline = time.monotonic() + 10
        while (snap := served.snapshot()).unfinished or snap.delivering:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert snap.kv_blocks_used == 0 and snap.kv_blocks_free == snap.num_kv_blocks == 512
        assert snap.num_finished == N_CLIENTS
    finally:
        http.stop()
        served.close()
    req = read_bundle(tmp_path / "bundle").requests
    assert len(req) == N_CLIENTS and (req["finish_reason"] == "length").all()
    assert req["last_byte_ns"].notna().all()
    assert validate_bundle(tmp_path / "bundle").valid
