"""GuideLLM (a published LLM load generator) runs unchanged against `serve`; its ITL agrees with the
analyzer's TPOT (same definition) and its client-side TTFT with the analyzer's server-side TTFT plus
the two client-only segments measured per request. Skipped when guidellm is not installed (it is not a
project dependency; see docs/serving.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bottleneck_map.bundle import read_bundle
from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
from bottleneck_map.embedded_engine.serving.server import ArrivalH11Protocol
from bottleneck_map.embedded_engine.serving.server_cli import build_server
from bottleneck_map.ingest.http_server import UvicornServer

pytest.importorskip("guidellm", reason="guidellm is not installed (pip install guidellm==0.8.1)")

TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "embedded_engine" / "model" / "presets"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_guidellm_against_serve_agrees_with_the_analyzer(tmp_path):
    from bottleneck_map.analyzer.api import analyze

    served = build_server(
        model="tiny",
        threads=1,
        engine_config=EngineConfig(device="cpu", max_num_seqs=16, num_kv_blocks=256, max_model_len=512),
        instance="guidellm-0",
        bundle=tmp_path / "bundle",
        measure_device=False,
    )
    http = UvicornServer(served.app)
    http.server.config.http = ArrivalH11Protocol  # as `serve` runs it
    http.start()
    report = tmp_path / "guidellm.json"
    try:
        subprocess.run(
            [sys.executable, "-m", "guidellm", "run",
             "--backend", f"kind=openai_http,target={http.url},model=tiny",
             "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER_DIR}",
             "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
             "--profile", "kind=concurrent,streams=1",
             "--constraint", "kind=max_requests,count=16",
             "--output", f"kind=json,path={report}", "--disable-console"],
            check=True, timeout=500, capture_output=True,
        )  # fmt: skip
    finally:
        http.stop()
        served.close()
    bench = json.loads(report.read_text())["benchmarks"][0]
    assert len(bench["requests"]["successful"]) == 16 and not bench["requests"]["errored"]
    g = bench["metrics"]
    ours = analyze(tmp_path / "bundle").latency_for("all")
    g_itl = g["inter_token_latency_ms"]["successful"]["mean"] / 1e3
    assert ours.tpot.mean == pytest.approx(g_itl, rel=0.10)

    b = read_bundle(tmp_path / "bundle")
    off = b.meta["clock"]["origin_unix_ns"] - b.meta["clock"]["origin_monotonic_ns"]
    req = b.requests.set_index("request_id")
    client_only = []
    for r in bench["requests"]["successful"]:
        t, s = r["info"]["timings"], req.loc[r["response_id"]]
        client_only.append(
            ((s.arrival_ns + off) / 1e9 - t["request_start"])
            + (t["first_token_iteration"] - (s.first_byte_ns + off) / 1e9)
        )
    g_ttft = g["time_to_first_token_ms"]["successful"]["mean"] / 1e3
    assert ours.ttft.mean < g_ttft  # the server sees less of the request than the client
    # the analyzer's TTFT of a streamed request ends at its first byte written: with send -> arrival
    # and first byte -> client read added, per request, it is GuideLLM's
    assert ours.ttft.mean + float(np.mean(client_only)) == pytest.approx(g_ttft, rel=0.01)
