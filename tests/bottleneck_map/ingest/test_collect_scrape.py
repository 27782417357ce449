"""``collect --scrape`` / ``--scrape-agent``: a server's own /metrics read every second into samples.

The vLLM page is one vLLM 0.32 served, its counters advanced on every scrape by a stand-in
server; the agent is the real ``bottleneck-map agent`` with the pynvml test double faking two
H100s (GPM on).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from factories import otlp_json, otlp_span
from typer.testing import CliRunner

from bottleneck_map.bundle import read_bundle
from bottleneck_map.cli import app

DATA = Path(__file__).parent / "data"
PAGE = (DATA / "vllm-0.32-metrics.txt").read_text()
AGENT_TESTS = Path(__file__).resolve().parents[2] / "agent"
COUNTER = re.compile(r"^(vllm:\S+?(?:_total|_count|_sum)(?:\{[^}]*\})?) (\S+)$", re.M)


class StandIn:
    """Serves the vLLM page at /metrics (counters + 10 per scrape) and /v1/models naming ``root``."""

    def __init__(self, root: str | None = None) -> None:
        self.n = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/v1/models":
                    body = json.dumps({"data": [{"id": "default", "root": root}]}).encode()
                elif self.path == "/metrics":
                    with lock:
                        outer.n += 1
                        n = outer.n
                    body = COUNTER.sub(lambda m: f"{m[1]} {float(m[2]) + 10 * n}", PAGE).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vllm_page(tmp_path):
    cfg = tmp_path / "model"
    cfg.mkdir()
    (cfg / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 512,
                "intermediate_size": 1536,
                "num_hidden_layers": 8,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "vocab_size": 8192,
                "torch_dtype": "float32",
            }
        )  # fmt: skip
    )
    server = StandIn(str(cfg))
    yield server
    server.close()


def test_scrape_only_records_series_model_and_cache_config(tmp_path, vllm_page):
    out = tmp_path / "b"
    args = ["collect", "--out", str(out), "--no-receive", "--scrape", vllm_page.url, "--duration", "2.5"]
    result = CliRunner().invoke(app, [*args, "--max-num-seqs", "8"])
    assert result.exit_code == 0, result.output
    assert re.search(r"\d+ scrapes", result.output)
    b = read_bundle(out)
    meta = b.meta
    assert meta["capabilities"]["samples"] is True
    assert meta["model"]["hidden_size"] == 512 and meta["model"]["dtype_bytes"] == 4  # via /v1/models' root
    assert meta["engine"] == {
        "name": "vllm",
        "chunked_prefill": True,
        "block_size": 32,
        "num_kv_blocks": 2048,
        "enable_prefix_caching": True,
        "max_num_seqs": 8,
    }
    (scrape,) = meta["ingest"]["scrape"]
    assert scrape["scrapes"] >= 3 and scrape["failures"] == 0 and scrape["itl_bounds_s"][0] == 0.01
    rows = b.samples.sort_values("ts_ns")
    assert set(rows["source"]) == {"scrape:vllm"}
    assert set(rows["instance"]) == {vllm_page.url.removeprefix("http://")}
    steps = rows["engine_steps_total"].to_numpy()
    assert (steps[1:] - steps[:-1] == 10).all()  # one row per scrape, counters as served
    assert len(rows["itl_bucket_counts"].iloc[-1]) == len(scrape["itl_bounds_s"]) + 1


def test_an_unreachable_target_is_counted_and_warned_about(tmp_path):
    out = tmp_path / "b"
    args = ["collect", "--out", str(out), "--no-receive", "--scrape", "http://127.0.0.1:9", "--duration", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no scrape of 127.0.0.1:9 succeeded" in result.output
    assert read_bundle(out).meta["ingest"]["scrape"][0]["failures"] >= 1


@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (["--scrape", "ftp://x"], "--scrape"),
        (["--scrape-agent", "localhost:9400"], "--scrape-agent"),
        (["--scrape-interval", "0"], "--scrape-interval"),
        (["--measure-threads", "0"], "--measure-threads"),
        (["--peak-flops", "-1"], "--peak-flops"),
        (["--model-config", "/nonexistent/config.json"], "--model-config"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, flags, hint):
    target = [] if flags[0] in ("--scrape", "--scrape-agent") else ["--scrape", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "b"), "--no-receive", *target, *flags])
    assert result.exit_code == 2
    assert hint in result.output
    assert not (tmp_path / "b").exists()


def _agent(port: int) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(AGENT_TESTS)!r}); import fake_pynvml as f; "
        "f.install(f.FakeNvml(f.h100s(2))); from bottleneck_map.cli import main; "
        "sys.argv = ['bottleneck-map', 'agent', *sys.argv[1:]]; main()"
    )
    return subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--interval", "0.2"])


@pytest.mark.slow
def test_agent_gpu_series_corroborate_the_inferred_steps(tmp_path, vllm_page):
    """Spans + a vLLM page + an agent on fake H100s: the GPU name picks the roofline's peaks, and
    the agent's DRAM and SM activity appear in the evidence of the classes they corroborate."""
    from vllm_oracle import free_port, wait_http

    from bottleneck_map.analyzer import analyze

    agent_port, otlp_port = free_port(), free_port()
    agent = _agent(agent_port)
    try:
        wait_http(f"http://127.0.0.1:{agent_port}/metrics", 60, agent)
        out = tmp_path / "b"
        cmd = [sys.executable, "-m", "bottleneck_map.cli", "collect", "--out", str(out), "--port", str(otlp_port),
               "--scrape", vllm_page.url, "--scrape-agent", f"http://127.0.0.1:{agent_port}", "--duration", "4"]  # fmt: skip
        collect = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        wait_http(f"http://127.0.0.1:{otlp_port}/health", 60, collect)
        now = time.time_ns()
        spans = [otlp_span(i, t0=now - 3_000_000_000) for i in range(3)]
        instance = vllm_page.url.removeprefix("http://")
        r = httpx.post(f"http://127.0.0.1:{otlp_port}/v1/traces", json=otlp_json(spans, instance=instance))
        assert r.status_code == 200
        _, err = collect.communicate(timeout=60)
        assert collect.returncode == 0, err
    finally:
        agent.terminate()
        agent.wait(30)
    b = read_bundle(out)
    assert b.meta["device"] == {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3", "count": 2}
    gpu = b.samples.query("source == 'scrape:agent'")
    assert set(gpu["device"]) == {"0", "1"}
    assert gpu["gpm_dram_bw_util_ratio"].notna().any()
    m = analyze(out)
    assert m.device.source == "table"  # H100 peaks from the table, by the agent's GPU name
    by_cls = {v.cls: v for v in m.verdicts}
    assert any("GPM DRAM bandwidth" in e.text for e in by_cls["decode_memory_bandwidth"].evidence)
    assert any("GPM SM activity" in e.text for e in by_cls["prefill_compute"].evidence)
