"""A property every bottleneck map must hold, shared by the simulated and the engine scenarios."""

from __future__ import annotations

from bottleneck_map.analyzer.classify import CONFIDENT
from bottleneck_map.analyzer.roofline import ROOF_NEAR


def _ev(v):
    return {e.metric: e for e in v.evidence}


def assert_agrees_with_evidence(m):
    """Properties every map must hold: a confident verdict's cited numbers support it, the ranking is
    explained, confidence never rests on unattributed time, and no evidence line is repeated."""
    unknown = next((e.value for v in m.verdicts for e in v.evidence if e.metric == "unattributed_share"), 0.0)
    for v in m.verdicts:
        texts = [e.text for e in v.evidence]
        assert len(texts) == len(set(texts)), texts
        assert v.confidence <= max(1 - unknown, 0) + 1e-9 or v.cls == "balanced"
        if v.confidence < CONFIDENT:
            continue
        ev = _ev(v)
        if v.cls == "decode_memory_bandwidth":
            assert ev["decode_step_bandwidth_utilization_p50"].value >= ROOF_NEAR
            assert ev["decode_step_bandwidth_utilization_p50"].threshold == ROOF_NEAR
        if v.cls == "decode_compute":
            ai = ev["decode_arithmetic_intensity"]
            assert ai.value >= ai.threshold and ev["decode_flops_utilization"].value >= ROOF_NEAR
        if v.cls == "host_overhead":
            # Host work outside the forward pass plus forward passes off both roofs, or idle gaps.
            off = ev["forward_off_roof_fraction"].value if "forward_off_roof_fraction" in ev else 0.0
            steps = ev["host_fraction_of_step_time"].value + off
            idle = ev["idle_fraction"].value if "idle_fraction" in ev else 0.0
            assert steps >= ev["host_fraction_of_step_time"].threshold or idle >= 0.2, v.evidence
        # Raising --max-num-seqs is advised only with the evidence that it bound.
        if "raise --max-num-seqs" in v.recommendation:
            assert "--max-num-seqs" in v.knobs
            assert "running reached max_num_seqs" in v.recommendation or "batch slots are full" in v.recommendation
    for v in m.verdicts[1:]:
        if v.confidence > m.top.confidence:
            assert v.rank_note and m.top.cls in v.rank_note, (v.cls, v.rank_note)
