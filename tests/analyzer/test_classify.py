"""Verdicts on simulated bundles: each knob of the simulator plants one cause; the analyzer must name it.

These run in well under a second each. ``test_scenarios.py`` does the same with the real engine.
"""

from __future__ import annotations

import pytest
from analyzer_synth import MS, US
from verdict_checks import assert_agrees_with_evidence

from bottleneck_map.analyzer import CLASSES, analyze
from bottleneck_map.analyzer.classify import CONFIDENT

SCENARIOS = {
    "queueing": dict(n_requests=60, rate_per_s=60, max_num_seqs=2, output_tokens=16),
    "kv_cache_capacity": dict(n_requests=40, rate_per_s=80, num_kv_blocks=24, prompt_tokens=48, output_tokens=40),
    "prefill_compute": dict(
        n_requests=12,
        rate_per_s=4,
        prompt_tokens=2000,
        output_tokens=4,
        prefill_ns_per_token=150 * US,
        max_num_batched_tokens=8192,
    ),
    "decode_memory_bandwidth": dict(n_requests=24, rate_per_s=10, prompt_tokens=32, output_tokens=64),
    "pcie_transfer": dict(
        n_requests=30,
        rate_per_s=40,
        num_kv_blocks=40,
        max_num_seqs=8,
        prompt_tokens=48,
        output_tokens=40,
        preemption_mode="swap",
        swap_ns_per_block=50 * MS,
    ),
    "host_overhead": dict(n_requests=24, rate_per_s=10, host_ns=20 * MS, output_tokens=16),
    "tokenization": dict(n_requests=40, rate_per_s=30, tokenize_ns=40 * MS, tokenizer_workers=1, output_tokens=8),
    "streaming": dict(n_requests=24, rate_per_s=10, stream_delay_ns=15 * MS, output_tokens=16),
    "power_thermal": dict(n_requests=24, rate_per_s=10, output_tokens=32, throttle=True, device="cuda"),
    "balanced": dict(
        n_requests=24,
        rate_per_s=10,
        prompt_tokens=150,
        output_tokens=6,
        tokenize_ns=1 * MS,
        stream_delay_ns=1 * MS,
        host_ns=600 * US,
    ),
}

# The evidence metric each verdict must cite, with a check on its measured value.
EVIDENCE = {
    "queueing": ("slots_full_fraction", lambda v: v > 0.5),
    "kv_cache_capacity": ("preemptions", lambda v: v > 0),
    "prefill_compute": ("prefill_arithmetic_intensity", lambda v: v > 10),  # above the ridge point (5e10/5e9 = 10)
    "decode_memory_bandwidth": ("decode_arithmetic_intensity", lambda v: v < 10),
    "pcie_transfer": ("swap_bytes", lambda v: v > 0),
    "host_overhead": ("host_fraction_of_step_time", lambda v: v > 0.5),
    "tokenization": ("tokenize_p95_s", lambda v: v >= 0.04),
    "streaming": ("streaming_p95_s", lambda v: v > 0.1),
    "power_thermal": ("busy_sm_clock_ratio", lambda v: v == pytest.approx(1.1 / 1.98)),
}


@pytest.mark.parametrize("cls", list(SCENARIOS))
def test_planted_cause_is_the_top_verdict(sim_bundle, cls):
    m = analyze(sim_bundle(**SCENARIOS[cls]))
    assert m.top.cls == cls, [(v.cls, v.share_of_latency, v.confidence) for v in m.verdicts]
    if cls == "balanced":
        assert all(v.confidence < CONFIDENT for v in m.verdicts if v.cls != "balanced")
        return
    assert m.top.confidence >= CONFIDENT
    assert m.top.recommendation and m.top.knobs
    metric, check = EVIDENCE[cls]
    ev = {e.metric: e.value for e in m.top.evidence}
    assert metric in ev and check(ev[metric]), m.top.evidence
    assert ev[f"{cls}_share_of_e2e"] == pytest.approx(m.top.share_of_latency)
    assert m.top.requests_affected > 0 and m.top.sample_request_ids


def test_shares_sum_to_one_and_classes_are_stable(sim_bundle):
    m = analyze(sim_bundle(**SCENARIOS["kv_cache_capacity"]))
    assert {v.cls for v in m.verdicts} <= set(CLASSES)
    assert sum(v.share_of_latency for v in m.verdicts) == pytest.approx(1.0, abs=1e-6)


def test_queue_split_between_slots_and_kv_blocks(sim_bundle):
    kv = analyze(sim_bundle(**SCENARIOS["kv_cache_capacity"]))
    q = analyze(sim_bundle(**SCENARIOS["queueing"]))
    assert kv.verdict("kv_cache_capacity").share_of_latency > kv.verdict("queueing").share_of_latency
    assert q.verdict("queueing").share_of_latency > 5 * q.verdict("kv_cache_capacity").share_of_latency


def test_bundle_without_steps_says_what_it_cannot_judge(sim_bundle):
    m = analyze(sim_bundle(with_steps=False, **SCENARIOS["decode_memory_bandwidth"]))
    cannot = {u.cls for u in m.unreachable}
    assert {"prefill_compute", "decode_memory_bandwidth", "host_overhead", "pcie_transfer", "power_thermal"} <= cannot
    assert not cannot & {v.cls for v in m.verdicts}
    assert m.top.cls == "balanced"  # the decode time is unattributed, not guessed


def test_windows_cover_the_run_and_find_the_queueing_burst(sim_bundle):
    m = analyze(sim_bundle(**SCENARIOS["queueing"]), window_s=0.5)
    assert m.windows[0].start_s == 0 and m.windows[-1].end_s >= m.duration_s
    assert sum(w.requests_arrived for w in m.windows) == 60
    assert sum(1 for w in m.windows if w.cls == "queueing") >= len(m.windows) // 2
    assert m.verdict("queueing").windows


def test_worst_requests_explained(sim_bundle):
    m = analyze(sim_bundle(**SCENARIOS["queueing"]))
    w = m.worst_requests[0]
    assert w.e2e_s == max(x.e2e_s for x in m.worst_requests)
    assert w.cls == "queueing" and "queueing" in w.why
    assert sum(w.stages_s.values()) == pytest.approx(w.e2e_s, rel=0.01)


def test_cost_and_energy(sim_bundle):
    m = analyze(sim_bundle(**SCENARIOS["decode_memory_bandwidth"]), gpu_hour_cost=3.6)
    lat = m.latency_for("all")
    tokens = lat.output_token_throughput * lat.duration_s
    assert m.cost.cost_per_million_output_tokens == pytest.approx(3.6 * lat.duration_s / 3600 / tokens * 1e6)
    assert m.cost.energy_j > 0 and m.cost.energy_per_output_token_j == pytest.approx(m.cost.energy_j / tokens)


@pytest.mark.parametrize("cls", ["kv_cache_capacity", "pcie_transfer", "power_thermal", "host_overhead"])
def test_interval_make_up_matches_exact_own_steps(sim_bundle, monkeypatch, cls):
    """Large bundles use the class make-up of each request's intervals instead of its own steps."""
    from bottleneck_map.analyzer import api

    b = sim_bundle(**SCENARIOS[cls])
    exact = analyze(b)
    monkeypatch.setattr(api, "EXACT_OWN_ROWS", 0)
    approx = analyze(b)
    assert approx.top.cls == exact.top.cls
    for v in exact.verdicts:
        assert approx.verdict(v.cls).share_of_latency == pytest.approx(v.share_of_latency, abs=0.05)


# --- verdicts agree with their own evidence ---------------------------------------------------

# Decode steps far below both rooflines: the simulated model's decode step reads ~16 MB, 3 ms at the
# 5 GB/s peak; 16 ms per step is ~20% of the bandwidth roof (and far from the compute roof).
SLOW_DECODE = dict(n_requests=24, rate_per_s=10, prompt_tokens=32, output_tokens=64, decode_base_ns=16 * MS)


def _ev(v):
    return {e.metric: e for e in v.evidence}


@pytest.mark.parametrize("cls", list(SCENARIOS))
def test_every_planted_scenario_agrees_with_its_evidence(sim_bundle, cls):
    assert_agrees_with_evidence(analyze(sim_bundle(**SCENARIOS[cls])))


def test_decode_far_below_both_rooflines_is_overhead_not_bandwidth(sim_bundle):
    from bottleneck_map.analyzer.roofline import ROOF_NEAR

    m = analyze(sim_bundle(**SLOW_DECODE))
    assert m.top.cls == "host_overhead", [(v.cls, v.share_of_latency, v.confidence) for v in m.verdicts]
    assert m.verdict("decode_memory_bandwidth").confidence < CONFIDENT
    ev = _ev(m.top)
    step = ev["decode_step_bandwidth_utilization_p50"]
    assert step.value < ROOF_NEAR and step.threshold == ROOF_NEAR
    assert f"{100 * step.value:.0f}% of peak bandwidth" in step.text and "50%" in step.text
    # Which overhead: the forward passes (not host work outside them, which is ~2% here).
    assert ev["host_fraction_of_step_time"].value < 0.1
    assert "forward passes" in m.top.recommendation and "raise --max-num-seqs" not in m.top.recommendation
    assert_agrees_with_evidence(m)


def test_decode_near_the_bandwidth_roofline_is_decode_memory_bandwidth(sim_bundle):
    from bottleneck_map.analyzer.roofline import ROOF_NEAR

    m = analyze(sim_bundle(**SCENARIOS["decode_memory_bandwidth"]))
    step = _ev(m.top)["decode_step_bandwidth_utilization_p50"]
    assert m.top.cls == "decode_memory_bandwidth" and step.value >= ROOF_NEAR
    # The batch never reached max_num_seqs and nothing waited: no advice to raise it.
    assert "raise --max-num-seqs" not in m.top.recommendation
    assert "--max-num-seqs" not in m.top.knobs


def test_a_binding_kv_limit_heads_the_per_step_classes(sim_bundle):
    # KV blocks exhausted (preemptions, admission blocked) while every step runs far below its roofline.
    sim = dict(n_requests=24, rate_per_s=8, num_kv_blocks=18, prompt_tokens=48, output_tokens=40)
    m = analyze(sim_bundle(**sim, decode_base_ns=16 * MS))
    host = m.verdict("host_overhead")
    assert host.confidence >= CONFIDENT and host.share_of_latency > m.top.share_of_latency
    assert m.top.cls == "kv_cache_capacity"
    assert "kv_cache_capacity" in host.rank_note and "batch" in host.rank_note
    assert_agrees_with_evidence(m)


def test_prefix_caching_is_not_advised_when_it_is_on(sim_bundle):
    on = analyze(sim_bundle(**SCENARIOS["prefill_compute"], prefix_caching=True))
    off = analyze(sim_bundle(**SCENARIOS["prefill_compute"]))
    assert on.top.cls == off.top.cls == "prefill_compute"
    assert "prefix caching" not in on.top.recommendation and "--enable-prefix-caching" not in on.top.knobs
    assert "enable prefix caching" in off.top.recommendation


def test_queueing_advises_more_slots_only_when_slots_were_full(sim_bundle):
    m = analyze(sim_bundle(**SCENARIOS["queueing"]))
    assert m.top.cls == "queueing" and "raise --max-num-seqs" in m.top.recommendation
    slots = _ev(m.top)["slots_full_fraction"].value
    assert slots > 0.5


def test_unattributed_time_caps_confidence(sim_bundle):
    m = analyze(sim_bundle(with_steps=False, **SCENARIOS["queueing"]))
    unknown = _ev(m.verdict("queueing"))["unattributed_share"].value
    assert 0 < unknown < 1
    assert all(v.confidence <= 1 - unknown + 1e-9 for v in m.verdicts)
    assert_agrees_with_evidence(m)


def test_a_request_is_labelled_by_the_class_holding_most_of_its_time(sim_bundle):
    from bottleneck_map.analyzer import analyze_full

    a = analyze_full(sim_bundle(**SCENARIOS["kv_cache_capacity"]))
    for w in a.result.worst_requests:
        row = a.attributed[(a.stages["request_id"] == w.request_id).to_numpy()].iloc[0]
        assert w.cls == row.idxmax(), (w.why, row.to_dict())
        assert f"({100 * row.max() / (w.e2e_s * 1e9):.0f}%)" in w.why
    # Without steps most of a decode-heavy request's time is unattributed: no class claims it.
    m = analyze(sim_bundle(with_steps=False, **SCENARIOS["decode_memory_bandwidth"]))
    w = m.worst_requests[0]
    assert w.cls is None and w.why.startswith("unattributed") and "largest attributed class" in w.why


def test_decode_near_the_compute_roofline_is_decode_compute(sim_bundle):
    # 64 sequences decoding at once: 14 FLOP/byte, above the ridge point (10), at half the peak FLOP/s.
    big = dict(n_requests=64, rate_per_s=1000, prompt_tokens=16, output_tokens=64, max_num_seqs=64)
    m = analyze(sim_bundle(**big, decode_base_ns=1 * MS, decode_ns_per_seq=300 * US))
    assert m.top.cls == "decode_compute", [(v.cls, v.share_of_latency, v.confidence) for v in m.verdicts]
    ev = _ev(m.top)
    assert ev["decode_arithmetic_intensity"].value >= ev["decode_arithmetic_intensity"].threshold
    assert m.verdict("decode_memory_bandwidth").confidence < CONFIDENT
    assert_agrees_with_evidence(m)


def test_a_contradicted_class_leaves_no_confident_verdict():
    from bottleneck_map.analyzer.classify import Signals, verdicts

    # 70% of latency in decode steps, yet the median decode step reaches 30% of peak bandwidth.
    share = {c: 0.0 for c in CLASSES if c != "balanced"}
    share.update(decode_memory_bandwidth=0.7, prefill_compute=0.2, tokenization=0.1)
    values = {"decode_step_bw_util_p50": 0.3, "decode_step_bytes_per_s_p50": 3e9, "peak_bw": 1e10}
    out = verdicts(Signals(share=share, values=values))
    top = out[0]
    assert top.cls == "balanced" and top.confidence < CONFIDENT
    assert any(e.metric == "decode_memory_bandwidth_contradicted" for e in top.evidence)
    assert "contradicted" in top.recommendation and "device peaks" in top.recommendation
    dec = next(v for v in out if v.cls == "decode_memory_bandwidth")
    assert dec.confidence < CONFIDENT and "contradicted" in dec.rank_note
