"""Scenario suite on the real engine: drive ``bottleneck-map run`` (built-in models, CPU) into one
cause at a time and check that the analyzer names it, with the right numbers in its evidence.

Each run is a subprocess (the engine's torch threads stay out of the test process). The causes
are produced with engine flags and the engine's fault injection (``--inject``, recorded in
``meta["injected"]``, which the analyzer never reads). Classes the engine cannot produce on a
CPU (decode_memory_bandwidth, pcie_transfer as top verdict, balanced, power_thermal) are
covered with simulated bundles in ``test_classify.py``; ``docs/bottleneck-map.md`` says why.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bottleneck_map.analyzer import analyze

pytestmark = pytest.mark.slow

BASE = ["--device", "cpu", "--seed", "1", "--no-agent", "--shared-prefix", "0"]


def run_engine(tmp_path, name, *args):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "bottleneck_map.cli", "run", *BASE, *args, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def evidence(m):
    return {e.metric: e.value for e in m.top.evidence}


def test_queueing_one_batch_slot(tmp_path):
    b, stdout = run_engine(
        tmp_path,
        "q",
        "--model",
        "tiny",
        "--max-num-seqs",
        "1",
        "--num-requests",
        "10",
        "--request-rate",
        "inf",
        "--prompt-len",
        "16",
        "--output-len",
        "16",
    )
    assert "Bottleneck: queueing" in stdout  # the run prints the analyzer's summary
    m = analyze(b)
    assert m.top.cls == "queueing"
    ev = evidence(m)
    assert ev["slots_full_fraction"] > 0.8 and ev["mean_num_waiting"] >= 1
    assert "--max-num-seqs" in m.top.knobs


def test_kv_cache_capacity_few_blocks(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "kv",
        "--model",
        "tiny",
        "--num-kv-blocks",
        "12",
        "--max-num-seqs",
        "8",
        "--num-requests",
        "14",
        "--request-rate",
        "inf",
        "--prompt-len",
        "40",
        "--output-len",
        "40",
    )
    m = analyze(b)
    assert m.top.cls == "kv_cache_capacity", [(v.cls, v.share_of_latency, v.confidence) for v in m.verdicts]
    ev = evidence(m)
    assert ev["kv_usage_p95"] >= 0.9 and ev["preemptions"] > 0
    assert m.latency_for("all").preemptions == ev["preemptions"]


def test_tokenization_slow_tokenizer(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "tok",
        "--model",
        "tiny",
        "--num-requests",
        "10",
        "--request-rate",
        "20",
        "--prompt-len",
        "64",
        "--output-len",
        "4",
        "--inject",
        "tokenize_us_per_token=5000",
    )
    m = analyze(b)
    assert m.top.cls == "tokenization"
    assert evidence(m)["tokenize_p95_s"] >= 64 * 5000e-6 * 0.9  # 64 tokens x 5 ms, measured


def test_streaming_slow_client(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "st",
        "--model",
        "tiny",
        "--num-requests",
        "6",
        "--request-rate",
        "2",
        "--prompt-len",
        "16",
        "--output-len",
        "16",
        "--inject",
        "client_read_ms=250",
    )
    m = analyze(b)
    assert m.top.cls == "streaming"
    assert evidence(m)["streaming_p95_s"] > 1.0  # 16 chunks read 250 ms apart lag well behind generation


def test_host_overhead_per_step_work(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "host",
        "--model",
        "tiny",
        "--num-requests",
        "8",
        "--request-rate",
        "4",
        "--prompt-len",
        "16",
        "--output-len",
        "16",
        "--inject",
        "step_host_ms=40",
    )
    m = analyze(b)
    assert m.top.cls == "host_overhead"
    assert evidence(m)["host_fraction_of_step_time"] > 0.5


def test_prefill_compute_long_prompts(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "pf",
        "--model",
        "default",
        "--num-requests",
        "2",
        "--request-rate",
        "0.5",
        "--prompt-len",
        "700",
        "--output-len",
        "2",
    )
    m = analyze(b)
    assert m.top.cls == "prefill_compute", [(v.cls, v.share_of_latency, v.confidence) for v in m.verdicts]
    ev = evidence(m)
    pre = next(p for p in m.roofline if p.phase in ("prefill", "mixed"))
    assert ev["prefill_arithmetic_intensity"] > pre.ridge_point  # compute-bound on the measured roofline


def test_swap_mode_measures_pcie_time(tmp_path):
    b, _ = run_engine(
        tmp_path,
        "swap",
        "--model",
        "tiny",
        "--num-kv-blocks",
        "12",
        "--max-num-seqs",
        "8",
        "--num-requests",
        "10",
        "--request-rate",
        "inf",
        "--prompt-len",
        "40",
        "--output-len",
        "40",
        "--preemption-mode",
        "swap",
    )
    m = analyze(b)
    pcie = m.verdict("pcie_transfer")
    ev = {e.metric: e.value for e in pcie.evidence}
    assert ev["swap_bytes"] > 0 and pcie.share_of_latency > 0
    assert m.top.cls in ("kv_cache_capacity", "host_overhead", "pcie_transfer")
